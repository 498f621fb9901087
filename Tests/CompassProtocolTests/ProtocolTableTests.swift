import CompassProtocol
import CompassWire
import Foundation
import Testing
import ZMQ

/// The Swift side of the protocol against its one machine-readable statement, `spec/protocol.json`
/// (the Python client, the engine adapters and the bench are tested against the same file): every
/// command byte, every message's fields as the codecs read them, every code and limit.
@Suite("Protocol table (spec/protocol.json)")
struct ProtocolTableTests {
    static let table: JSON = {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../spec/protocol.json")
        return (try? Data(contentsOf: url)).flatMap { try? JSON.parse([UInt8]($0)) } ?? .null
    }()

    struct Message: Sendable, CustomTestStringConvertible {
        var direction: String
        var name: String
        var byte: UInt8
        var fields: [(name: String, type: String)]
        var testDescription: String { "\(direction) \(name)" }
    }

    static let messages: [Message] = ["producer_to_broker", "broker_to_producer", "worker_to_broker", "broker_to_worker"].flatMap { direction in
        (table["messages"]?[direction]?.array ?? []).map { m in
            Message(direction: direction, name: m["name"]?.string ?? "", byte: UInt8(m["byte"]?.int ?? 0),
                    fields: (m["fields"]?.array ?? []).map { ($0.array?[0].string ?? "", $0.array?[1].string ?? "") })
        }
    }

    /// The command bytes of a direction, by the table's names (Swift case names upper-cased).
    static func swiftCommands(_ direction: String) -> [String: UInt8] {
        func named<E: CaseIterable & RawRepresentable>(_: E.Type) -> [String: UInt8] where E.RawValue == UInt8 {
            Dictionary(uniqueKeysWithValues: E.allCases.map { (String(describing: $0).uppercased(), $0.rawValue) })
        }
        switch direction {
        case "producer_to_broker": return named(ProducerCommand.self)
        case "broker_to_producer": return named(BrokerReply.self)
        case "worker_to_broker": return named(WorkerCommand.self)
        default: return named(BrokerToWorker.self)
        }
    }

    @Test func everyCommandByteIsTheTables() {
        #expect(Self.messages.count == 26)
        for direction in ["producer_to_broker", "broker_to_producer", "worker_to_broker", "broker_to_worker"] {
            let table = Dictionary(uniqueKeysWithValues: Self.messages.filter { $0.direction == direction }.map { ($0.name, $0.byte) })
            #expect(Self.swiftCommands(direction) == table, "\(direction)")
        }
    }

    /// A message with a sample value of each field's type.
    static func frames(_ m: Message, dropping: Int = 0) -> [Frame] {
        var frames = [WireProtocol.headerFrame(), Frame(bytes: [m.byte])]
        for field in m.fields.dropLast(dropping) {
            switch field.type {
            case "string": frames.append(Frame(bytes: Array("x".utf8)))
            case "u8": frames.append(Frame(bytes: [1]))
            case "u32": frames.append(Frame(bytes: [0, 0, 0, 7]))
            case "meta": frames.append(Frame(bytes: [UInt8](repeating: 0, count: 16)))
            case "json": frames.append(Frame(bytes: Array("{}".utf8)))
            default: frames.append(Frame(bytes: Array("[]".utf8)))
            }
        }
        return frames
    }

    /// Decodes with the codec of the message's direction and encodes the value again.
    static func roundTrip(_ m: Message, _ frames: [Frame]) throws(ProtocolError) -> Int {
        switch m.direction {
        case "producer_to_broker": try ProducerRequest.decode(frames[...]).encode().count
        case "broker_to_producer": try ProducerReply.decode(frames[...]).encode().count
        case "worker_to_broker": try WorkerMessage.decode(frames[...]).encode().count
        default: try BrokerWorkerMessage.decode(frames[...]).encode().count
        }
    }

    @Test(arguments: messages)
    func theCodecReadsAndWritesTheTablesFields(_ m: Message) throws {
        #expect(try Self.roundTrip(m, Self.frames(m)) == 2 + m.fields.count)
        if !m.fields.isEmpty {
            #expect(throws: ProtocolError.self) { _ = try Self.roundTrip(m, Self.frames(m, dropping: 1)) }
        }
    }

    @Test func codesAndLimits() {
        #expect(Self.table["reject_codes"]?.array?.compactMap(\.string) == RejectCode.allCases.map(\.rawValue))
        let failures = Self.table["failure_codes"]?.array ?? []
        #expect(failures.compactMap { $0["code"]?.string }.sorted() == FailureCode.allCases.map(\.rawValue).sorted())
        for entry in failures {
            let code = FailureCode(rawValue: entry["code"]?.string ?? "")
            #expect(code?.retryableByDefault == entry["retryable"]?.bool, "\(entry.text)")
        }
        let limits = Self.table["limits"]
        #expect(Self.table["signature"]?.string.map { Array($0.utf8) } == WireProtocol.signature)
        #expect(Self.table["version"]?.int == Int(WireProtocol.version))
        #expect(limits?["batch_id_bytes"]?.int == WireProtocol.maxBatchIDBytes)
        #expect(limits?["pool_name_bytes"]?.int == WireProtocol.maxPoolNameBytes)
        #expect(limits?["session_bytes"]?.int == WireProtocol.maxSessionBytes)
        #expect(limits?["code_bytes"]?.int == WireProtocol.maxCodeBytes)
        #expect(limits?["message_text_bytes"]?.int == WireProtocol.maxMessageTextBytes)
        #expect(limits?["default_max_payload_bytes"]?.int == WireProtocol.defaultMaxPayloadBytes)
        #expect(limits?["default_max_attempts"]?.int == Int(WireProtocol.defaultMaxAttempts))
        #expect(limits?["default_heartbeat_ms"]?.int == Int(WireProtocol.defaultHeartbeatMilliseconds))
        #expect(limits?["default_liveness"]?.int == Int(WireProtocol.defaultLiveness))
        #expect(limits?["meta_bytes"]?.int == BatchMeta.byteCount)
        #expect(limits?["max_credit"]?.int == WireProtocol.maxCredit)
        #expect(limits?["frames_per_message"]?.int == WireProtocol.maxFramesPerMessage)
        #expect(limits?["control_message_bytes"]?.int == WireProtocol.maxControlMessageBytes)
        #expect(limits?["message_headroom_bytes"]?.int == WireProtocol.messageHeadroomBytes)
        #expect(limits?["json_depth"]?.int == WireProtocol.maxJSONDepth)
        #expect(limits?["status_sessions"]?.int == WireProtocol.maxStatusSessions)
        #expect(limits?["default_max_pool_bytes"]?.int == WireProtocol.defaultMaxPoolBytes)
        #expect(limits?["default_session_share_divisor"]?.int == WireProtocol.defaultSessionShareDivisor)
        #expect(limits?["default_remembered_acks"]?.int == WireProtocol.defaultRememberedAcks)
    }

    @Test func readyRequiresTheTablesRequiredFieldsOnly() throws {
        let required = Self.names("worker_json", "ready", "required")
        #expect(required == Set(WorkerCapabilities.requiredFields))
        // The required fields alone make a READY; without any one of them it is refused, naming it.
        let minimal = #"{"pool":"p","credit":2}"#
        let caps = try JSONDecoder().decode(WorkerCapabilities.self, from: Data(minimal.utf8))
        #expect(caps.pool == "p" && caps.credit == 2 && caps.tp == 1 && caps.gpus.isEmpty && caps.host.isEmpty)
        for field in required {
            let without = required.subtracting([field]).map { $0 == "pool" ? #""pool":"p""# : "\"\($0)\":2" }.joined(separator: ",")
            do {
                _ = try JSONDecoder().decode(WorkerCapabilities.self, from: Data("{\(without)}".utf8))
                Issue.record("a READY without \(field) was decoded")
            } catch {
                #expect(JSONFieldError.describe(error) == "missing required field '\(field)'")
            }
        }
        // Every other field of the table may be null.
        let nulls = Self.names("worker_json", "ready", "fields").subtracting(required).map { "\"\($0)\":null" }.joined(separator: ",")
        #expect(throws: Never.self) { try JSONDecoder().decode(WorkerCapabilities.self, from: Data("{\"pool\":\"p\",\"credit\":0,\(nulls)}".utf8)) }
    }

    /// The keys a JSON document encodes to.
    static func keys(_ value: some Encodable) -> Set<String> {
        guard let data = try? JSONEncoder().encode(value), case .object(let pairs)? = try? JSON.parse([UInt8](data)) else { return [] }
        return Set(pairs.map(\.0))
    }

    static func names(_ path: String...) -> Set<String> {
        var node = table
        for key in path { node = node[key] ?? .null }
        return Set(node.array?.compactMap(\.string) ?? [])
    }

    @Test func readyAndWelcomeDocumentsAreTheTables() {
        let bare = WorkerCapabilities(pool: "p", tp: 1, gpus: [], model: "", engine: "e", maxBatch: 1, credit: 2, pid: 1, host: "h", version: "0")
        #expect(Self.keys(bare) == Self.names("worker_json", "ready", "fields"), "an implicit READY stays as it always was")
        var full = bare
        full.creditMode = .explicit
        full.capacity = 256
        full.capacityTokens = 1 << 20
        #expect(Self.keys(full) == Self.names("worker_json", "ready", "fields").union(Self.names("worker_json", "ready", "optional")))
        let welcome = WorkerWelcome(workerID: "w", heartbeatMilliseconds: 1000, liveness: 3)
        #expect(Self.keys(welcome) == Self.names("worker_json", "welcome", "fields"))
        var explicit = welcome
        explicit.creditMode = .explicit
        #expect(Self.keys(explicit) == Self.names("worker_json", "welcome", "fields").union(Self.names("worker_json", "welcome", "optional")))
        #expect(Self.names("worker_json", "credit_modes") == Set(CreditMode.allCases.map(\.rawValue)))
        #expect(Self.names("engine_protocol", "engine_stats") == Self.keys(EngineStepStats(capacity: 1, steps: 1, sequenceSteps: 1, occupancy: 1)))
        let stats = ResultStats(requests: 1, failedRequests: 0, promptTokens: 1, completionTokens: 1, engineMilliseconds: 1, worker: "w",
                                engine: EngineStepStats(capacity: 1, steps: 1, sequenceSteps: 1))
        #expect(Self.names("engine_protocol", "optional", "result_stats").isSubset(of: Self.keys(stats)))
    }

    @Test func affinityKeysAndTheMetaThatCarriesThemAreTheTables() throws {
        let affinity = Self.table["affinity"]
        #expect(affinity?["meta_bytes"]?.int == BatchMeta.byteCountWithAffinity)
        #expect(affinity?["meta_offset"]?.int == BatchMeta.byteCount)
        #expect(affinity?["prefix_bytes"]?.int == AffinityKey.prefixBytes)
        let meta = BatchMeta(requestCount: 3, priority: -1, affinity: 0x0102_0304_0506_0708)
        #expect(meta.bytes.map { String(format: "%02x", $0) }.joined() == affinity?["meta_example"]?.string)
        #expect(meta.bytes.withUnsafeBytes { BatchMeta(bytes: $0) } == meta)
        #expect(try BatchMeta.decode(Frame(bytes: BatchMeta(requestCount: 3).bytes)).affinity == 0, "a 16-byte meta has no key")
        let examples = affinity?["examples"]?.array ?? []
        #expect(examples.count >= 5)
        for example in examples {
            let request = try JSONDecoder().decode(InferenceRequest.self, from: Data((example["request"] ?? .null).bytes))
            #expect(String(AffinityKey.of(request), radix: 16).leftPadded(to: 16) == example["key"]?.string, "\(request.customID)")
        }
        // A SUBMIT with a key round-trips through the codec with it.
        let submit = ProducerRequest.submit(batchID: "b", pool: "p", meta: meta, payload: Frame(bytes: Array("[]".utf8)))
        guard case .submit(_, _, let decoded, _) = try ProducerRequest.decode(submit.encode()[...]) else { Issue.record("not a SUBMIT"); return }
        #expect(decoded.affinity == 0x0102_0304_0506_0708)
    }

    @Test func anOlderBrokerDecodesANewReadyAndAnOlderWorkersReadyDecodesHere() throws {
        // Unknown keys are ignored both ways: that is what keeps either side working with the other.
        let newer = #"{"pool":"p","tp":1,"gpus":[],"model":"","engine":"e","max_batch":1,"credit":2,"pid":1,"host":"h","version":"0","credit_mode":"explicit","capacity":64,"some_future_key":1}"#
        let caps = try JSONDecoder().decode(WorkerCapabilities.self, from: Data(newer.utf8))
        #expect(caps.creditMode == .explicit && caps.capacity == 64)
        let older = #"{"pool":"p","tp":1,"gpus":[],"model":"","engine":"e","max_batch":1,"credit":2,"pid":1,"host":"h","version":"0"}"#
        #expect(try JSONDecoder().decode(WorkerCapabilities.self, from: Data(older.utf8)).creditMode == nil)
        let unknownMode = #"{"pool":"p","tp":1,"gpus":[],"model":"","engine":"e","max_batch":1,"credit":2,"pid":1,"host":"h","version":"0","credit_mode":"by_requests"}"#
        #expect(throws: DecodingError.self, "a mode this broker does not know is refused, not taken for implicit") {
            _ = try JSONDecoder().decode(WorkerCapabilities.self, from: Data(unknownMode.utf8))
        }
    }
}

private extension String {
    func leftPadded(to width: Int) -> String { String(repeating: "0", count: max(0, width - count)) + self }
}
