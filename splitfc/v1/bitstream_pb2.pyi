from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
    DTYPE_BFLOAT16: _ClassVar[DType]
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT16: DType
DTYPE_BFLOAT16: DType

class TensorInfo(_message.Message):
    __slots__ = ("name", "shape", "dtype")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ...) -> None: ...

class Range(_message.Message):
    __slots__ = ("low", "high")
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    low: float
    high: float
    def __init__(self, low: _Optional[float] = ..., high: _Optional[float] = ...) -> None: ...

class Preprocessing(_message.Message):
    __slots__ = ("ranges", "bit_depth", "packing", "frame_height", "frame_width")
    RANGES_FIELD_NUMBER: _ClassVar[int]
    BIT_DEPTH_FIELD_NUMBER: _ClassVar[int]
    PACKING_FIELD_NUMBER: _ClassVar[int]
    FRAME_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FRAME_WIDTH_FIELD_NUMBER: _ClassVar[int]
    ranges: _containers.RepeatedCompositeFieldContainer[Range]
    bit_depth: int
    packing: str
    frame_height: int
    frame_width: int
    def __init__(self, ranges: _Optional[_Iterable[_Union[Range, _Mapping]]] = ..., bit_depth: _Optional[int] = ..., packing: _Optional[str] = ..., frame_height: _Optional[int] = ..., frame_width: _Optional[int] = ...) -> None: ...

class CodecParams(_message.Message):
    __slots__ = ("codec", "rate", "extra")
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CODEC_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    codec: str
    rate: int
    extra: _containers.ScalarMap[str, str]
    def __init__(self, codec: _Optional[str] = ..., rate: _Optional[int] = ..., extra: _Optional[_Mapping[str, str]] = ...) -> None: ...

class FeatureBitstream(_message.Message):
    __slots__ = ("format_version", "split", "codec", "tensors", "preprocessing", "payload", "payload_crc32", "decoded_digest")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_CRC32_FIELD_NUMBER: _ClassVar[int]
    DECODED_DIGEST_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    split: str
    codec: CodecParams
    tensors: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    preprocessing: Preprocessing
    payload: bytes
    payload_crc32: int
    decoded_digest: bytes
    def __init__(self, format_version: _Optional[int] = ..., split: _Optional[str] = ..., codec: _Optional[_Union[CodecParams, _Mapping]] = ..., tensors: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ..., preprocessing: _Optional[_Union[Preprocessing, _Mapping]] = ..., payload: _Optional[bytes] = ..., payload_crc32: _Optional[int] = ..., decoded_digest: _Optional[bytes] = ...) -> None: ...
