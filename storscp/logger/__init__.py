"""The logger process: the only writer of storscp1.log / storscp2.log."""
