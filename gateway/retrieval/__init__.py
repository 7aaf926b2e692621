"""The Query/Retrieve SCP for radiologists' workstations, cut the way pynetdicom's qrscp is.

- ``vocabulary``: policies, Q/R levels and the statuses the handlers answer with;
- ``identifier``: what a C-MOVE / C-GET Identifier may name (PS3.4 C.4.2.2.1), checked;
- ``answers``: C-FIND matching and answer building, pure functions over index entries;
- ``planner``: which protected objects a retrieval sends, from the index alone;
- ``sending``: fetch, restore or egress-check, and yield the sub-operations;
- ``handlers``: the thin pynetdicom event handlers that bind these together and audit.
"""
