"""The committer process: ready depot files into the storage directory."""
