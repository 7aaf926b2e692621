"""Orthanc Python plugin: store only objects the privacy gateway protected.

Orthanc runs this with the system Python, not the gateway's virtualenv, so it uses only
Orthanc's own API. An object is accepted when it says its identity was removed
(0012,0062 = YES) and carries the gateway's recovery envelope (private creator
"PRIVACY GATEWAY ENVELOPE 1" in group 0013). Anything else, over
REST or C-STORE, is refused and logged by SOP Instance UID only.
"""

import json

import orthanc

ENVELOPE_CREATOR = "PRIVACY GATEWAY ENVELOPE 1"


def _text(tags, key):
    value = tags.get(key)
    return value.strip() if isinstance(value, str) else None


def is_protected(tags):
    """Identity removed, and a recovery envelope (format version and key id) present.

    Orthanc's JSON leaves binary values out, so the ciphertext itself is not visible here.
    """
    if _text(tags, "0012,0062") != "YES":
        return False
    for element in range(0x10, 0x100):
        if _text(tags, "0013,%04x" % element) == ENVELOPE_CREATOR:
            return _text(tags, "0013,%02x01" % element) == "1" and bool(_text(tags, "0013,%02x02" % element))
    return False


def on_received(dicom, origin):
    flags = orthanc.DicomToJsonFlags.INCLUDE_PRIVATE_TAGS | orthanc.DicomToJsonFlags.INCLUDE_UNKNOWN_TAGS
    tags = json.loads(orthanc.DicomBufferToJson(dicom, orthanc.DicomToJsonFormat.SHORT, flags, 256))
    if is_protected(tags):
        return orthanc.ReceivedInstanceAction.KEEP_AS_IS, None
    orthanc.LogWarning("privacy filter: refused an unprotected instance (SOP Instance UID %s)" % _text(tags, "0008,0018"))
    return orthanc.ReceivedInstanceAction.DISCARD, None


orthanc.RegisterReceivedInstanceCallback(on_received)
