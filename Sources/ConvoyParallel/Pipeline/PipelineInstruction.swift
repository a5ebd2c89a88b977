/// One step of a pipeline rank's program for one training step (see ``PipelineSchedule``).
///
/// Virtual stages: with `pp` ranks and `v` chunks per rank the model is cut into `pp·v` contiguous chunks,
/// virtual stages `0 ..< pp·v` in model order; virtual stage `s` lives on rank `s % pp` (Megatron's interleaved
/// layout). With `v = 1` the virtual stage is the rank.
///
/// Sends are asynchronous: an executor posts them and goes on. Receives block until their message arrives.
/// A message is identified by (sender, receiver, ``messageTag(gradient:virtualStage:)``, micro-batch), and
/// every schedule sends and receives the messages of one (sender, receiver, tag) in increasing micro-batch
/// order, so an executor may match them first-in, first-out without sending the micro-batch index.
public enum PipelineInstruction: Hashable, Sendable, CustomStringConvertible {
    /// Fetches the micro-batch's inputs (on the rank of virtual stage 0) or its targets (on the rank of the last
    /// virtual stage, which computes the loss); one instruction when both are the same rank.
    case loadMicroBatch(microBatch: Int)
    /// Runs virtual stage `virtualStage` forward on the micro-batch and stashes what its backward needs.
    case forward(microBatch: Int, virtualStage: Int)
    /// Runs virtual stage `virtualStage` backward on the micro-batch, accumulating parameter gradients and
    /// freeing its stash.
    case backward(microBatch: Int, virtualStage: Int)
    /// Sends the output of `virtualStage` to rank `to`, which holds `virtualStage + 1`.
    case sendActivation(microBatch: Int, virtualStage: Int, to: Int)
    /// Receives the input of `virtualStage` from rank `from`, which holds `virtualStage − 1`.
    case receiveActivation(microBatch: Int, virtualStage: Int, from: Int)
    /// Sends the gradient with respect to the input of `virtualStage` to rank `to`, which holds `virtualStage − 1`.
    case sendGradient(microBatch: Int, virtualStage: Int, to: Int)
    /// Receives the gradient with respect to the output of `virtualStage` from rank `from`, which holds
    /// `virtualStage + 1`.
    case receiveGradient(microBatch: Int, virtualStage: Int, from: Int)
    /// Reduces the accumulated gradients across data-parallel replicas (and shared parameters across stages).
    case reduceGradients
    /// Updates this rank's parameters.
    case optimizerStep

    /// The tag of the messages that cross the boundary between virtual stages `virtualStage` and
    /// `virtualStage + 1`: activations going up use `2·s`, gradients coming down `2·s + 1`.
    ///
    /// Tags name the boundary rather than the sender's stage, so that both sides compute the same value:
    /// `sendActivation(s)` and `receiveActivation(s + 1)` use `messageTag(gradient: false, virtualStage: s)`;
    /// `sendGradient(s + 1)` and `receiveGradient(s)` use `messageTag(gradient: true, virtualStage: s)`.
    public static func messageTag(gradient: Bool, virtualStage: Int) -> Int {
        2 * virtualStage + (gradient ? 1 : 0)
    }

    /// The tag of this instruction's message, or `nil` for instructions that do not communicate.
    public var messageTag: Int? {
        switch self {
        case .sendActivation(_, let stage, _): return Self.messageTag(gradient: false, virtualStage: stage)
        case .receiveActivation(_, let stage, _): return Self.messageTag(gradient: false, virtualStage: stage - 1)
        case .sendGradient(_, let stage, _): return Self.messageTag(gradient: true, virtualStage: stage - 1)
        case .receiveGradient(_, let stage, _): return Self.messageTag(gradient: true, virtualStage: stage)
        default: return nil
        }
    }

    /// The rank this instruction sends to or receives from, or `nil` for instructions that do not communicate.
    public var peer: Int? {
        switch self {
        case .sendActivation(_, _, let rank), .receiveActivation(_, _, let rank),
             .sendGradient(_, _, let rank), .receiveGradient(_, _, let rank): return rank
        default: return nil
        }
    }

    public var description: String {
        switch self {
        case .loadMicroBatch(let mb): return "loadMicroBatch(mb \(mb))"
        case .forward(let mb, let stage): return "forward(mb \(mb), stage \(stage))"
        case .backward(let mb, let stage): return "backward(mb \(mb), stage \(stage))"
        case .sendActivation(let mb, let stage, let to): return "sendActivation(mb \(mb), stage \(stage), to rank \(to))"
        case .receiveActivation(let mb, let stage, let from): return "receiveActivation(mb \(mb), stage \(stage), from rank \(from))"
        case .sendGradient(let mb, let stage, let to): return "sendGradient(mb \(mb), stage \(stage), to rank \(to))"
        case .receiveGradient(let mb, let stage, let from): return "receiveGradient(mb \(mb), stage \(stage), from rank \(from))"
        case .reduceGradients: return "reduceGradients"
        case .optimizerStep: return "optimizerStep"
        }
    }
}
