"""The commitment process: Storage Commitment reports, checked and delivered."""
