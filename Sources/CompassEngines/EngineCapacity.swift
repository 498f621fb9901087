/// How much work an engine takes at once, from its `ready` message (docs/engines.md).
///
/// An engine that batches continuously says `sequences`: the requests it runs in one step. The
/// worker then admits requests, not batches: it hands over held batches, however many, while the
/// requests inside stay below that, so one-request batches fill the engine as one large batch
/// would. Without it the engine takes `maxBatches` whole batches at once, as engines always did.
public struct EngineCapacity: Sendable, Equatable, CustomStringConvertible {
    /// Batches inside the engine at once when `sequences` is not known (1 to `maxBatchesLimit`).
    public var maxBatches: Int
    /// Sequences the engine runs at once (vLLM: `max_num_seqs`, bounded by its KV cache).
    public var sequences: Int?
    /// Tokens the engine's KV cache holds. Reported only: the worker does not tokenize, so it
    /// cannot admit by tokens; the engine queues what does not fit.
    public var tokens: Int?

    /// The most batches an engine without a sequence capacity may ask for (the protocol's bound).
    public static let maxBatchesLimit = 8
    /// The largest sequence capacity taken from an engine (beyond any engine's step).
    public static let sequencesLimit = 65_536

    public init(maxBatches: Int = 1, sequences: Int? = nil, tokens: Int? = nil) {
        self.maxBatches = max(1, min(Self.maxBatchesLimit, maxBatches))
        self.sequences = sequences.map { max(1, min(Self.sequencesLimit, $0)) }
        self.tokens = tokens.map { max(1, $0) }
    }

    public var description: String {
        if let sequences { return "\(sequences) sequences" + (tokens.map { ", \($0) KV-cache tokens" } ?? "") }
        return maxBatches == 1 ? "1 batch" : "\(maxBatches) batches"
    }
}
