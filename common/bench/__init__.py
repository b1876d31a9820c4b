"""The offline benchmark (``splitfc bench``, ``splitfc bench-codecs``).

``runner`` plans and runs (split, codec, rate, sample) points with ``cache`` for
resuming; ``features`` extracts or reads features; ``task`` is the only contact
with models and metrics; ``aggregate``, ``analysis`` and ``bdrate`` compute the
paper's figures; ``report`` and ``plots`` write them; ``codec_micro`` is the
codec micro-benchmark; ``memory`` measures peak memory.
"""
