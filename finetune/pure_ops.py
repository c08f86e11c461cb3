"""The op gate's list: op types a graph file from outside may hold (:func:`finetune.op_gate.check_ops`).

Pure computation only: math, neural-network layers and their gradients, array and shape ops, control
flow (v1 and v2, TensorArray/TensorList), in-graph image decoding and resizing (decoders take bytes, not
paths), random numbers, constants, placeholders, variables with their reads, assigns and optimizer
updates, in-memory lookup tables, and summaries as values (serialised protos; the ops that write them
are refused). Refused, by not being here: anything that reads or writes files (ReadFile, WriteFile,
Save/Restore, MatchingFiles, ImmutableConst...), reaches the network or other processes, calls back
into Python (PyFunc, EagerPyFunc), queues, readers, datasets and iterators (they read files), logging
and summary writers, Print, debugging ops, and every custom op.

How the list was made: the op types of every graph our code builds were collected (scripts run once,
not kept): the export tower of all 13 registered backbones, unfrozen (variables, initialisers),
frozen and optimised, with input float and image_bytes; heads with every layer type and activation;
the training graphs with each optimizer, clipping, moving averages and label smoothing (less their
tf.data pipeline: datasets, iterators, ReadFile). Then reviewed, and widened by hand with the pure ops
common in published frozen graphs and TF1 training .meta files. tests/test_op_gate.py checks that
every graph our export writes passes. Keep the tuple sorted; add an op only after reading what it does.
"""
from __future__ import annotations

PURE_OPS: tuple[str, ...] = (
    "Abs", "Acos", "Acosh", "Add", "AddN", "AddV2", "AdjustContrastv2", "AdjustHue", "AdjustSaturation", "All", "Any",
    "ApplyAdadelta", "ApplyAdagrad", "ApplyAdam", "ApplyCenteredRMSProp", "ApplyFtrl", "ApplyFtrlV2",
    "ApplyGradientDescent", "ApplyMomentum", "ApplyRMSProp", "ApproximateEqual", "ArgMax", "ArgMin", "AsString",
    "Asin", "Asinh", "Assert", "Assign", "AssignAdd", "AssignAddVariableOp", "AssignSub", "AssignSubVariableOp",
    "AssignVariableOp", "Atan", "Atan2", "Atanh", "AvgPool", "AvgPool3D", "AvgPoolGrad", "BatchMatMul",
    "BatchMatMulV2", "BatchMatMulV3", "BatchNormWithGlobalNormalization", "BatchToSpaceND", "BiasAdd", "BiasAddGrad",
    "BiasAddV1", "Bitcast", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BroadcastArgs", "BroadcastGradientArgs",
    "BroadcastTo", "Bucketize", "Case", "Cast", "Ceil", "CheckNumerics", "CheckNumericsV2", "ClipByValue", "Concat",
    "ConcatOffset", "ConcatV2", "ConjugateTranspose", "Const", "ControlTrigger", "Conv2D", "Conv2DBackpropFilter",
    "Conv2DBackpropInput", "Conv3D", "Conv3DBackpropFilterV2", "Conv3DBackpropInputV2", "Cos", "Cosh",
    "CropAndResize", "Cumprod", "Cumsum", "DecodeAndCropJpeg", "DecodeBmp", "DecodeGif", "DecodeImage", "DecodeJpeg",
    "DecodePng", "DecodeRaw", "DepthToSpace", "DepthwiseConv2dNative", "DepthwiseConv2dNativeBackpropFilter",
    "DepthwiseConv2dNativeBackpropInput", "Diag", "DiagPart", "Digamma", "Dilation2D", "Div", "DivNoNan",
    "DynamicPartition", "DynamicStitch", "Einsum", "Elu", "EluGrad", "EmptyTensorList", "EncodeJpeg",
    "EncodePng", "EnsureShape", "Enter", "Equal", "Erf", "Erfc", "EuclideanNorm", "Exit", "Exp", "ExpandDims",
    "Expm1", "ExtractJpegShape", "FakeQuantWithMinMaxArgs", "FakeQuantWithMinMaxVars",
    "FakeQuantWithMinMaxVarsPerChannel", "Fill", "Floor", "FloorDiv", "FloorMod", "FusedBatchNorm",
    "FusedBatchNormGrad", "FusedBatchNormGradV2", "FusedBatchNormGradV3", "FusedBatchNormV2", "FusedBatchNormV3",
    "FusedPadConv2D", "FusedResizeAndPadConv2D", "Gather", "GatherNd", "GatherV2", "Greater", "GreaterEqual",
    "HSVToRGB", "HashTableV2", "HistogramSummary", "Identity", "IdentityN", "If", "ImageSummary", "InTopK",
    "InTopKV2", "InitializeTableV2", "Inv", "InvGrad", "Invert", "InvertPermutation", "IsFinite", "IsInf", "IsNan",
    "IsVariableInitialized", "L2Loss", "LRN", "LRNGrad", "LeakyRelu", "LeakyReluGrad", "LeftShift", "Less",
    "LessEqual", "Lgamma", "LinSpace", "ListDiff", "Log", "Log1p", "LogSoftmax", "LogicalAnd", "LogicalNot",
    "LogicalOr", "LookupTableFindV2", "LookupTableImportV2", "LookupTableSizeV2", "LoopCond", "MatMul",
    "MatrixBandPart", "MatrixDiag", "MatrixDiagV3", "MatrixSetDiag", "Max", "MaxPool", "MaxPool3D", "MaxPoolGrad",
    "MaxPoolGradGrad", "MaxPoolGradV2", "MaxPoolV2", "MaxPoolWithArgmax", "Maximum", "Mean", "Merge", "MergeSummary",
    "Min", "Minimum", "MirrorPad", "MirrorPadGrad", "Mod", "Mul", "MulNoNan", "Multinomial", "Neg", "NextIteration",
    "NoOp", "NonMaxSuppressionV3", "NonMaxSuppressionV4", "NonMaxSuppressionV5", "NotEqual", "OneHot", "OnesLike",
    "Pack", "Pad", "PadV2", "ParallelDynamicStitch", "PartitionedCall", "Placeholder", "PlaceholderV2",
    "PlaceholderWithDefault", "Pow", "PreventGradient", "Prod", "QuantizeAndDequantizeV2", "QuantizeAndDequantizeV3",
    "QuantizeAndDequantizeV4", "RGBToHSV", "RandomGamma", "RandomShuffle", "RandomStandardNormal", "RandomUniform",
    "RandomUniformInt", "Range", "Rank", "ReadVariableOp", "RealDiv", "Reciprocal", "ReciprocalGrad", "RefEnter",
    "RefExit", "RefMerge", "RefNextIteration", "RefSwitch", "Relu", "Relu6", "Relu6Grad", "ReluGrad", "Reshape",
    "ResizeArea", "ResizeBicubic", "ResizeBilinear", "ResizeBilinearGrad", "ResizeNearestNeighbor",
    "ResizeNearestNeighborGrad", "ResourceApplyAdadelta", "ResourceApplyAdagrad", "ResourceApplyAdagradV2",
    "ResourceApplyAdam", "ResourceApplyCenteredRMSProp", "ResourceApplyFtrl", "ResourceApplyFtrlV2",
    "ResourceApplyGradientDescent", "ResourceApplyKerasMomentum", "ResourceApplyMomentum", "ResourceApplyRMSProp",
    "ResourceGather", "ResourceScatterAdd", "ResourceScatterSub", "ResourceScatterUpdate", "Reverse",
    "ReverseSequence", "ReverseV2", "RightShift", "Rint", "Round", "Rsqrt", "RsqrtGrad",
    "SampleDistortedBoundingBoxV2", "ScalarSummary", "ScaleAndTranslate", "ScatterAdd", "ScatterNd", "ScatterSub",
    "ScatterUpdate", "SegmentMean", "SegmentSum", "Select", "SelectV2", "Selu", "SeluGrad", "Shape", "ShapeN",
    "Sigmoid", "SigmoidGrad", "Sign", "Sin", "Sinh", "Size", "Slice", "Snapshot", "Softmax",
    "SoftmaxCrossEntropyWithLogits", "Softplus", "SoftplusGrad", "Softsign", "SoftsignGrad", "SpaceToBatchND",
    "SpaceToDepth", "SparseMatMul", "SparseSoftmaxCrossEntropyWithLogits", "Split", "SplitV", "Sqrt", "SqrtGrad",
    "Square", "SquaredDifference", "Squeeze", "StatefulPartitionedCall", "StatelessCase", "StatelessIf",
    "StatelessMultinomial", "StatelessRandomGetAlg", "StatelessRandomGetKeyCounter",
    "StatelessRandomGetKeyCounterAlg", "StatelessRandomNormal", "StatelessRandomNormalV2", "StatelessRandomUniform",
    "StatelessRandomUniformInt", "StatelessRandomUniformIntV2", "StatelessRandomUniformV2",
    "StatelessTruncatedNormal", "StatelessTruncatedNormalV2", "StatelessWhile", "StopGradient", "StridedSlice",
    "StridedSliceGrad", "StringFormat", "StringJoin", "StringLength", "StringToNumber", "Sub", "Substr", "Sum",
    "Switch", "Tan", "Tanh", "TanhGrad", "TensorArrayCloseV3", "TensorArrayConcatV3", "TensorArrayGatherV3",
    "TensorArrayGradV3", "TensorArrayReadV3", "TensorArrayScatterV3", "TensorArraySizeV3", "TensorArraySplitV3",
    "TensorArrayV3", "TensorArrayWriteV3", "TensorListConcatV2", "TensorListElementShape", "TensorListFromTensor",
    "TensorListGather", "TensorListGetItem", "TensorListLength", "TensorListPopBack", "TensorListPushBack",
    "TensorListReserve", "TensorListResize", "TensorListScatterIntoExistingList", "TensorListSetItem",
    "TensorListSplit", "TensorListStack", "TensorScatterAdd", "TensorScatterUpdate", "TensorSummary",
    "TensorSummaryV2", "Tile", "TopK", "TopKV2", "Transpose", "TruncateDiv", "TruncateMod", "TruncatedNormal",
    "Unique", "Unpack", "UnsortedSegmentMax", "UnsortedSegmentSum", "VarHandleOp", "VarIsInitializedOp", "Variable",
    "VariableShape", "VariableV2", "Where", "While", "Xdivy", "Xlog1py", "Xlogy", "ZerosLike",
)

ALLOW_UNSAFE_OPS_HELP = ("let a graph file hold ops outside the list of pure computation ops (file, network, "
                         "process or Python ops, queues, readers, custom ops): they run with your permissions. "
                         "Only for files you trust")

