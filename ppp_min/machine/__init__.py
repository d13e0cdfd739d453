"""Figures of the machine a run is on: throughput and MFU against the measured matmul peak, resident memory."""
