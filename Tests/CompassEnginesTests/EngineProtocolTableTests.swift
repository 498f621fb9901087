import CompassProtocol
import Foundation
import Logging
import Testing
@testable import CompassEngines

/// The worker's side of the engine protocol against spec/protocol.json `engine_protocol` (the
/// Python adapters are tested against the same table: bin/engines/tests/test_protocol_table.py):
/// the message types each way, every member name, the lines the worker writes and the messages it
/// reads. A name missing from the table, or one the table has and the worker does not, fails here.
@Suite("Engine protocol table (spec/protocol.json engine_protocol)")
struct EngineProtocolTableTests {
    static let table: JSON = {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../spec/protocol.json")
        return ((try? Data(contentsOf: url)).flatMap { try? JSON.parse([UInt8]($0)) } ?? .null)["engine_protocol"] ?? .null
    }()

    static func members(_ path: String...) -> Set<String> {
        var node = table
        for key in path { node = node[key] ?? .null }
        if case .object(let pairs) = node { return Set(pairs.map(\.0)) }
        return Set(node.array?.compactMap(\.string) ?? [])
    }

    /// Every member name of a direction's messages.
    static func fields(_ direction: String) -> Set<String> {
        members(direction).reduce(into: []) { $0.formUnion(members(direction, $1)) }
    }

    @Test func messageTypesAreTheTables() {
        #expect(Set(EngineProtocol.ToEngine.allCases.map(\.rawValue)) == Self.members("to_engine"))
        #expect(Set(EngineProtocol.FromEngine.allCases.map(\.rawValue)) == Self.members("from_engine"))
    }

    @Test func memberNamesAreTheTables() {
        let table = Self.fields("to_engine").union(Self.fields("from_engine"))
            .union(Self.members("optional", "ready")).union(Self.members("optional", "result_stats")).union(Self.members("engine_stats"))
        #expect(Set(EngineProtocol.Key.allCases.map(\.rawValue)) == table.union(["type"]))
    }

    /// The keys of one JSON object line.
    static func keys(_ line: [UInt8]) -> Set<String> {
        guard case .object(let pairs)? = try? JSON.parse(line) else { return [] }
        return Set(pairs.map(\.0))
    }

    @Test func theLinesTheWorkerWritesHaveTheTablesMembers() {
        let batch = EngineProtocol.batchHead(batchID: "b\"1", attempt: 2, deadlineMilliseconds: 30) + Array("[]".utf8) + EngineProtocol.batchTail
        let cancel = EngineProtocol.cancel(batchID: "b", attempt: 2)
        let lines: [EngineProtocol.ToEngine: [UInt8]] = [.batch: batch, .cancel: cancel, .shutdown: EngineProtocol.shutdown]
        for type in EngineProtocol.ToEngine.allCases {
            let line = lines[type] ?? []
            #expect(line.last == 0x0a && line.dropLast().firstIndex(of: 0x0a) == nil, "one line")
            #expect(Self.keys(line) == Self.members("to_engine", type.rawValue).union(["type"]), "\(type)")
            #expect((try? JSON.parse(line))?["type"]?.string == type.rawValue)
        }
        #expect(String(decoding: batch, as: UTF8.self) == #"{"type":"batch","batch_id":"b\"1","attempt":2,"deadline_ms":30,"requests":[]}"# + "\n")
        #expect(String(decoding: cancel, as: UTF8.self) == #"{"type":"cancel","batch_id":"b","attempt":2}"# + "\n")
        #expect(String(decoding: EngineProtocol.shutdown, as: UTF8.self) == #"{"type":"shutdown"}"# + "\n")
    }

    /// A sample value for each member an engine sends.
    static func sample(_ name: String) -> JSON {
        switch name {
        case "attempt": 3
        case "done", "max_batches": 2
        case "total", "capacity": 8
        case "tokens", "capacity_tokens": 64
        case "retryable": false
        case "code": .string(FailureCode.oom.rawValue)
        case "results": .array([])
        case "stats": .object([("engine_ms", .double(1.5))])
        default: .string(name)
        }
    }

    @Test(arguments: EngineProtocol.FromEngine.allCases)
    func theWorkerReadsEveryMessageOfTheTable(_ type: EngineProtocol.FromEngine) throws {
        let names = Self.table["from_engine"]?[type.rawValue]?.array?.compactMap(\.string) ?? []
        #expect(!names.isEmpty)
        let optional = Self.table["optional"]?[type.rawValue]?.array?.compactMap(\.string) ?? []
        let line = JSON.object([("type", .string(type.rawValue))] + (names + optional).map { ($0, Self.sample($0)) }).bytes
        let engine = try ProcessEngine(name: "sh", command: EngineCommand(executable: "/bin/sh", arguments: ["-c", "exit 0"], environment: [:]),
                                       logger: Logger(label: "test"), hooks: EngineHooks())
        let message = line.withUnsafeBytes { engine.message($0) }
        switch (type, message) {
        case (.ready, .event(.ready(let detail, let capacity))):
            #expect(detail == "detail, model, start method start_method")
            #expect(capacity == EngineCapacity(maxBatches: 2, sequences: 8, tokens: 64))
        case (.progress, .event(.progress(let batchID, let attempt, let done, let total))):
            #expect((batchID, attempt, done, total) == ("batch_id", 3, 2, 8))
        case (.result, .event(.finished(let batchID, let attempt, let payload, let stats))):
            #expect((batchID, attempt, payload, stats.engineMilliseconds) == ("batch_id", 3, Array("[]".utf8), 1.5))
        case (.failed, .event(.failed(let batchID, let attempt, let code, let retryable, let text))):
            #expect((batchID, attempt, code, retryable, text) == ("batch_id", 3, .oom, false, "message"))
        case (.fatal, .fatal(let code, let text)):
            #expect((code, text) == (.oom, "message"))
        default:
            Issue.record("\(type): read as \(message)")
        }
    }
}
