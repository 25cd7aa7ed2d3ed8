"""Verbs that compose parts from different layers (the top layer, with skyloop/cli.py): `fly`
flies (flight/cli.py) and then draws its picture (calibration/flight_plot.py), `teleop` is `fly
--teleop`, `bench` puts the sim's, the trainer's and the exported policy's benchmarks under one verb."""
