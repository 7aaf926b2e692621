"""Orthanc Python plugin: store only objects the privacy gateway protected and tagged.

Orthanc runs this with its own Python, not the gateway's virtualenv, so it uses only
Orthanc's API and the standard library. An object is accepted when it says its identity
was removed (0012,0062 = YES), carries the gateway's recovery envelope (private creator
"PRIVACY GATEWAY ENVELOPE 1" in group 0013, format version and key id), and its
authenticity tag (0013,xx07, ``auth-NNNN:<32 hex>``) verifies: an HMAC-SHA256 over the
object's bytes with the tag's text replaced by the placeholder ``auth-0000:000...0``, under
the key of that id read from the file named by ``PrivacyGateway.AuthenticityKeys`` in
Orthanc's configuration (written by ``gateway keys export-authenticity``; re-read when it
changes). Markers alone can be typed into any object; the tag cannot. Anything else, over
REST or C-STORE, is refused and logged by SOP Instance UID only. Without a readable key
file everything is refused.
"""

import base64
import hashlib
import hmac
import json
import os

import orthanc

ENVELOPE_CREATOR = "PRIVACY GATEWAY ENVELOPE 1"
PLACEHOLDER = "auth-0000:" + "0" * 32
_keys = {"mtime": None, "keys": {}}


def _text(tags, key):
    value = tags.get(key)
    return value.strip() if isinstance(value, str) else None


def envelope_block(tags):
    """The envelope's private block byte (``xx``), or None."""
    if _text(tags, "0012,0062") != "YES":
        return None
    for element in range(0x10, 0x100):
        if _text(tags, f"0013,{element:04x}") == ENVELOPE_CREATOR:
            return element
    return None


def authentic(dicom, value, keys):
    """True when ``value`` is a valid authenticity tag of the bytes ``dicom``."""
    key = keys.get(value.partition(":")[0])
    if key is None or len(value) != len(PLACEHOLDER):
        return False
    needle = value.encode()
    position = dicom.find(needle)
    if position < 0 or dicom.find(needle, position + 1) >= 0:
        return False
    unsigned = dicom[:position] + PLACEHOLDER.encode() + dicom[position + len(needle):]
    expected = hmac.new(key, unsigned, hashlib.sha256).hexdigest()[:32]
    return hmac.compare_digest(expected, value.partition(":")[2])


def is_protected(dicom, tags, keys):
    """Identity removed, an envelope (format version and key id) and a valid tag."""
    block = envelope_block(tags)
    if block is None:
        return False
    if _text(tags, f"0013,{block:02x}01") != "1" or not _text(tags, f"0013,{block:02x}02"):
        return False
    value = _text(tags, f"0013,{block:02x}07")
    return bool(value) and authentic(dicom, value, keys)


# Read once: Orthanc's configuration does not change while it runs (parsing it for every
# instance cost about a tenth of the filter's time); the key file itself is re-read on change.
_KEY_FILE = json.loads(orthanc.GetConfiguration()).get("PrivacyGateway", {}).get("AuthenticityKeys")


def _authenticity_keys():
    path = _KEY_FILE
    try:
        mtime = os.stat(path).st_mtime_ns
        if mtime != _keys["mtime"]:
            with open(path) as fh:
                _keys["keys"] = {k: base64.b64decode(v) for k, v in json.load(fh).items()}
            _keys["mtime"] = mtime
    except (TypeError, OSError, ValueError, AttributeError):
        orthanc.LogError("privacy filter: no readable authenticity key file (PrivacyGateway.AuthenticityKeys); "
                         "refusing everything")
        _keys["mtime"], _keys["keys"] = None, {}
    return _keys["keys"]


def on_received(dicom, origin):
    flags = orthanc.DicomToJsonFlags.INCLUDE_PRIVATE_TAGS | orthanc.DicomToJsonFlags.INCLUDE_UNKNOWN_TAGS
    tags = json.loads(orthanc.DicomBufferToJson(dicom, orthanc.DicomToJsonFormat.SHORT, flags, 256))
    if is_protected(bytes(dicom), tags, _authenticity_keys()):
        return orthanc.ReceivedInstanceAction.KEEP_AS_IS, None
    orthanc.LogWarning("privacy filter: refused an instance that the gateway did not protect and tag "
                       "(SOP Instance UID {})".format(_text(tags, "0008,0018")))
    return orthanc.ReceivedInstanceAction.DISCARD, None


orthanc.RegisterReceivedInstanceCallback(on_received)
