"""Stand-in for Adafruit Blinka's board module (pin names only)."""

SCL = "SCL"
SDA = "SDA"
