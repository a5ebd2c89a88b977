import ConvoyNN
import ConvoyTensor

/// A part of one parameter that this rank holds, as a sharded checkpoint sees it: the boxes of the global
/// parameter it covers, and the tensor holding their elements (the boxes one after the other, each
/// row-major). A ``GradientSynchronizer`` lists the slices its optimizer updates (whole parameters under
/// DDP, flat shards under ZeRO, boxes under tensor parallelism) and where the parameter values live.
public struct CheckpointSlice {
    /// The parameter's name in the whole model.
    public var parameter: String
    /// The parameter's global shape.
    public var globalShape: [Int]
    /// The boxes of the global parameter this slice covers, in the order their elements lie in ``values``.
    public var boxes: [TensorBox]
    /// Where this rank holds the slice's values (a view into the parameter or a shard buffer).
    public var values: Tensor
    /// The fp32 master copy of the values, laid out like them, when the parameter trains in a lower precision
    /// (nil otherwise): saved as the tensor's master weights, and loaded from them — or, from a checkpoint
    /// that has none, from the parameter's values.
    public var master: Tensor?
    /// The name this rank's optimizer saves the slice's state under (`<optimizerKey>.<state>`).
    public var optimizerKey: String
    /// False for the second copy of a weight two ranks hold (a tied embedding on the last pipeline stage):
    /// only the primary copy is written.
    public var isPrimaryCopy: Bool
    /// True when the data-parallel replicas hold different slices of the parameter (ZeRO shards), so each
    /// writes its own; false when every replica holds the same slice, and the replicas share the writing.
    public var distinctAlongDataParallel: Bool

    public init(parameter: String, globalShape: [Int], boxes: [TensorBox], values: Tensor, optimizerKey: String,
                isPrimaryCopy: Bool, distinctAlongDataParallel: Bool, master: Tensor? = nil) {
        self.master = master
        self.parameter = parameter
        self.globalShape = globalShape
        self.boxes = boxes
        self.values = values
        self.optimizerKey = optimizerKey
        self.isPrimaryCopy = isPrimaryCopy
        self.distinctAlongDataParallel = distinctAlongDataParallel
    }

    /// A whole parameter, held by every data-parallel replica.
    public init(whole parameter: Parameter, name: String) {
        self.init(parameter: name, globalShape: parameter.shape, boxes: [TensorBox(whole: parameter.shape)], values: parameter,
                  optimizerKey: parameter.name ?? name, isPrimaryCopy: parameter.placement.isPrimaryCopy, distinctAlongDataParallel: false)
    }

    /// Elements in the slice.
    public var count: Int { boxes.reduce(0) { $0 + $1.count } }
}
