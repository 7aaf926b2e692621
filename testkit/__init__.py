"""Support for the tests, the demo and the benchmarks, kept out of the runtime package:
synthetic studies (``synthetic``), burned-in text test images (``testimages``), a real
Orthanc and a real gateway process on loopback (``localstack``) and the demo (``demo``).
"""
