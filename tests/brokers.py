"""Transitional alias: the private-broker helper lives in askexpert.localbroker."""

from askexpert.localbroker import MOSQUITTO, Broker, free_port, wait_port  # noqa: F401
