"""The built-in simulated robot: a 1/10 car on a track, its camera, depth camera and driver.

``SimWorld`` is the stepped simulator (tests, data generation, closed-loop
evaluation); ``SimRobot`` runs it in real time behind the Camera, DepthCamera
and Actuators protocols, so the daemon cannot tell it from a real car.
"""

from .camera_model import CameraMount, PinholeCamera
from .car import SUBSTEP_S, CarParams, CarState
from .expert import ExpertParams, PurePursuitExpert
from .render import DepthRenderer, RgbRenderer
from .robot import SimActuators, SimCamera, SimDepthCamera, SimRobot, build_sim_robot
from .track import ROAD_WIDTH_M, TRACK_NAMES, Track, make_track
from .world import Pose, SimWorld, car_params

__all__ = [
    "ROAD_WIDTH_M",
    "SUBSTEP_S",
    "TRACK_NAMES",
    "CameraMount",
    "CarParams",
    "CarState",
    "DepthRenderer",
    "ExpertParams",
    "PinholeCamera",
    "Pose",
    "PurePursuitExpert",
    "RgbRenderer",
    "SimActuators",
    "SimCamera",
    "SimDepthCamera",
    "SimRobot",
    "SimWorld",
    "Track",
    "build_sim_robot",
    "car_params",
    "make_track",
]
