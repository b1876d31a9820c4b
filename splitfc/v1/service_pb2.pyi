from splitfc.v1 import bitstream_pb2 as _bitstream_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InferRequest(_message.Message):
    __slots__ = ("request_id", "bitstream", "bitstream_message")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BITSTREAM_FIELD_NUMBER: _ClassVar[int]
    BITSTREAM_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    bitstream: bytes
    bitstream_message: _bitstream_pb2.FeatureBitstream
    def __init__(self, request_id: _Optional[str] = ..., bitstream: _Optional[bytes] = ..., bitstream_message: _Optional[_Union[_bitstream_pb2.FeatureBitstream, _Mapping]] = ...) -> None: ...

class BitstreamChunk(_message.Message):
    __slots__ = ("request_id", "total_bytes", "data")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    total_bytes: int
    data: bytes
    def __init__(self, request_id: _Optional[str] = ..., total_bytes: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class Array(_message.Message):
    __slots__ = ("shape", "dtype", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class Classification(_message.Message):
    __slots__ = ("label", "top5_ids", "top5_probs", "num_classes")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    TOP5_IDS_FIELD_NUMBER: _ClassVar[int]
    TOP5_PROBS_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    label: int
    top5_ids: _containers.RepeatedScalarFieldContainer[int]
    top5_probs: _containers.RepeatedScalarFieldContainer[float]
    num_classes: int
    def __init__(self, label: _Optional[int] = ..., top5_ids: _Optional[_Iterable[int]] = ..., top5_probs: _Optional[_Iterable[float]] = ..., num_classes: _Optional[int] = ...) -> None: ...

class Segmentation(_message.Message):
    __slots__ = ("mask",)
    MASK_FIELD_NUMBER: _ClassVar[int]
    mask: Array
    def __init__(self, mask: _Optional[_Union[Array, _Mapping]] = ...) -> None: ...

class DepthMap(_message.Message):
    __slots__ = ("depth",)
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    depth: Array
    def __init__(self, depth: _Optional[_Union[Array, _Mapping]] = ...) -> None: ...

class Answer(_message.Message):
    __slots__ = ("letter", "index", "choices", "probs")
    LETTER_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    PROBS_FIELD_NUMBER: _ClassVar[int]
    letter: str
    index: int
    choices: _containers.RepeatedScalarFieldContainer[str]
    probs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, letter: _Optional[str] = ..., index: _Optional[int] = ..., choices: _Optional[_Iterable[str]] = ..., probs: _Optional[_Iterable[float]] = ...) -> None: ...

class GeneratedImage(_message.Message):
    __slots__ = ("png", "height", "width")
    PNG_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    png: bytes
    height: int
    width: int
    def __init__(self, png: _Optional[bytes] = ..., height: _Optional[int] = ..., width: _Optional[int] = ...) -> None: ...

class TaskResult(_message.Message):
    __slots__ = ("task", "classification", "segmentation", "depth", "answer", "image")
    TASK_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    SEGMENTATION_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    task: str
    classification: Classification
    segmentation: Segmentation
    depth: DepthMap
    answer: Answer
    image: GeneratedImage
    def __init__(self, task: _Optional[str] = ..., classification: _Optional[_Union[Classification, _Mapping]] = ..., segmentation: _Optional[_Union[Segmentation, _Mapping]] = ..., depth: _Optional[_Union[DepthMap, _Mapping]] = ..., answer: _Optional[_Union[Answer, _Mapping]] = ..., image: _Optional[_Union[GeneratedImage, _Mapping]] = ...) -> None: ...

class ServerTiming(_message.Message):
    __slots__ = ("queue_ms", "decode_ms", "tail_ms", "total_ms")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    TAIL_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    decode_ms: float
    tail_ms: float
    total_ms: float
    def __init__(self, queue_ms: _Optional[float] = ..., decode_ms: _Optional[float] = ..., tail_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class RateInfo(_message.Message):
    __slots__ = ("payload_bytes", "bitstream_bytes", "feature_points", "bpfp")
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    BITSTREAM_BYTES_FIELD_NUMBER: _ClassVar[int]
    FEATURE_POINTS_FIELD_NUMBER: _ClassVar[int]
    BPFP_FIELD_NUMBER: _ClassVar[int]
    payload_bytes: int
    bitstream_bytes: int
    feature_points: int
    bpfp: float
    def __init__(self, payload_bytes: _Optional[int] = ..., bitstream_bytes: _Optional[int] = ..., feature_points: _Optional[int] = ..., bpfp: _Optional[float] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "code_name", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    CODE_NAME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    code_name: str
    message: str
    def __init__(self, code: _Optional[int] = ..., code_name: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class InferResponse(_message.Message):
    __slots__ = ("request_id", "split", "result", "timing", "rate", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    split: str
    result: TaskResult
    timing: ServerTiming
    rate: RateInfo
    error: Error
    def __init__(self, request_id: _Optional[str] = ..., split: _Optional[str] = ..., result: _Optional[_Union[TaskResult, _Mapping]] = ..., timing: _Optional[_Union[ServerTiming, _Mapping]] = ..., rate: _Optional[_Union[RateInfo, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SplitInfo(_message.Message):
    __slots__ = ("split", "family", "task", "feature_shape", "max_elements", "metric", "model")
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    MAX_ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    split: str
    family: str
    task: str
    feature_shape: _containers.RepeatedScalarFieldContainer[int]
    max_elements: int
    metric: str
    model: str
    def __init__(self, split: _Optional[str] = ..., family: _Optional[str] = ..., task: _Optional[str] = ..., feature_shape: _Optional[_Iterable[int]] = ..., max_elements: _Optional[int] = ..., metric: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

class CodecInfo(_message.Message):
    __slots__ = ("name", "available", "reason", "rate_name", "rates")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RATE_NAME_FIELD_NUMBER: _ClassVar[int]
    RATES_FIELD_NUMBER: _ClassVar[int]
    name: str
    available: bool
    reason: str
    rate_name: str
    rates: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., available: _Optional[bool] = ..., reason: _Optional[str] = ..., rate_name: _Optional[str] = ..., rates: _Optional[_Iterable[int]] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_message_bytes", "max_bitstream_bytes", "max_concurrency", "max_queue")
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_BITSTREAM_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    max_message_bytes: int
    max_bitstream_bytes: int
    max_concurrency: int
    max_queue: int
    def __init__(self, max_message_bytes: _Optional[int] = ..., max_bitstream_bytes: _Optional[int] = ..., max_concurrency: _Optional[int] = ..., max_queue: _Optional[int] = ...) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("version", "preset", "ready", "splits", "codecs", "limits", "bitstream_format_version")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PRESET_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    SPLITS_FIELD_NUMBER: _ClassVar[int]
    CODECS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    BITSTREAM_FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    preset: str
    ready: bool
    splits: _containers.RepeatedCompositeFieldContainer[SplitInfo]
    codecs: _containers.RepeatedCompositeFieldContainer[CodecInfo]
    limits: Limits
    bitstream_format_version: int
    def __init__(self, version: _Optional[str] = ..., preset: _Optional[str] = ..., ready: _Optional[bool] = ..., splits: _Optional[_Iterable[_Union[SplitInfo, _Mapping]]] = ..., codecs: _Optional[_Iterable[_Union[CodecInfo, _Mapping]]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., bitstream_format_version: _Optional[int] = ...) -> None: ...
