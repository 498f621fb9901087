import CompassProtocol

/// The engine protocol's names (docs/engines.md), spelt here once: the worker writes its messages
/// with `EngineProtocol.Writer` and reads an engine's through `EngineLine`, both by these names.
/// spec/protocol.json `engine_protocol` lists the same, and EngineProtocolTableTests holds them to
/// it (bin/engines/tests/test_protocol_table.py does the Python adapters').
enum EngineProtocol {
    /// The types of the worker's messages, on the engine's fd 3.
    enum ToEngine: String, CaseIterable {
        case batch, cancel, shutdown
    }

    /// The types of an engine's messages, on its fd 4.
    enum FromEngine: String, CaseIterable {
        case ready, progress, result, failed, fatal
    }

    /// The members of those messages, of a result's `stats` and of its `stats.engine`.
    enum Key: String, CaseIterable {
        case type
        // batch, cancel
        case batchID = "batch_id", attempt, deadlineMilliseconds = "deadline_ms", requests
        // ready
        case model, detail, startMethod = "start_method", maxBatches = "max_batches", capacity, capacityTokens = "capacity_tokens"
        // progress (`tokens` is the engine's to send; the worker reads `done` and `total`)
        case done, total, tokens
        // result, failed, fatal
        case results, stats, code, retryable, message
        // a result's stats (`requests` above), and its `engine`: capacity (above), steps...
        case engineMilliseconds = "engine_ms", failedRequests = "failed_requests", promptTokens = "prompt_tokens"
        case completionTokens = "completion_tokens", engine, steps, sequenceSteps = "sequence_steps", occupancy
    }

    /// One message line to the engine: `{"type":"NAME"`, then members in the order written, then
    /// `}` and a newline (`end`).
    struct Writer {
        private(set) var bytes: [UInt8] = [UInt8(ascii: "{")]

        init(_ type: ToEngine) { string(.type, type.rawValue) }

        /// `"KEY":` (after a comma, past the first member): what comes next is its value.
        mutating func key(_ key: Key) {
            if bytes.count > 1 { bytes.append(UInt8(ascii: ",")) }
            JSON.writeString(key.rawValue, into: &bytes)
            bytes.append(UInt8(ascii: ":"))
        }

        mutating func string(_ key: Key, _ value: String) {
            self.key(key)
            JSON.writeString(value, into: &bytes)
        }

        mutating func int(_ key: Key, _ value: some BinaryInteger) {
            self.key(key)
            bytes += String(value).utf8
        }

        /// The line, closed.
        func end() -> [UInt8] { bytes + [UInt8(ascii: "}"), 0x0a] }
    }

    /// The head of a `batch` line, up to its `requests`, whose value (the payload as it came) and
    /// the closing `}\n` follow it.
    static func batchHead(batchID: String, attempt: UInt32, deadlineMilliseconds: UInt32) -> [UInt8] {
        var line = Writer(.batch)
        line.string(.batchID, batchID)
        line.int(.attempt, attempt)
        line.int(.deadlineMilliseconds, deadlineMilliseconds)
        line.key(.requests)
        return line.bytes
    }

    static let batchTail = Array("}\n".utf8)

    static func cancel(batchID: String, attempt: UInt32) -> [UInt8] {
        var line = Writer(.cancel)
        line.string(.batchID, batchID)
        line.int(.attempt, attempt)
        return line.end()
    }

    static let shutdown = Writer(.shutdown).end()
}
