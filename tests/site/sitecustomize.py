"""Run at start-up by every Python process the tests start (conftest puts this folder on PYTHONPATH)."""

import torchvision_cpu

torchvision_cpu.install()
