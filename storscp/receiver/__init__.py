"""The receiver process: DICOM associations in, durable depot files out."""
