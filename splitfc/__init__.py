"""splitfc: split inference for large models with feature coding.

The repository's ``common/``, ``edge/`` and ``cloud/`` folders install as
``splitfc.common``, ``splitfc.edge`` and ``splitfc.cloud``; generated protobuf
code lives in ``splitfc.v1``.
"""

__version__ = "0.1.0"
