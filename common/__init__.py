"""Shared core of splitfc: split specs, pre-processing, bitstream, codecs, models, metrics."""
