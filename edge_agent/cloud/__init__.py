"""The cloud link: MQTT status, telemetry, events and commands that never move the robot."""
