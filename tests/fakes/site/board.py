"""Stand-in for Adafruit Blinka's board module (pin names only; see busio.py)."""

SCL = "SCL"
SDA = "SDA"
