"""storscp: a fault-tolerant DICOM Storage SCP service."""

__version__ = "0.1.0"

# Our DICOM implementation identity, written to every file's meta information.
# The root 1.2.826.0.1.3680043 is Medical Connections' free UID registry,
# where the suffix below was chosen for this project.
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1426.1"
IMPLEMENTATION_VERSION_NAME = "STORSCP_" + __version__.replace(".", "")
