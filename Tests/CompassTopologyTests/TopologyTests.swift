import CompassTopology
import Foundation
import Testing

@Suite("topology.yaml")
struct TopologyTests {
    @Test func theRepositoryDefaultIsValid() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let t = try Topology.load(path: root.appendingPathComponent("topology.yaml").path)
        #expect(t.pools.map(\.name) == ["default"])
        #expect(t.pools[0].workers == 2)
        #expect(t.pools[0].engine == "synthetic")
        #expect(t.broker.frontend == "tcp://127.0.0.1:5555")
    }

    @Test("Key, journal and gateway data paths are relative to the topology file, not the working directory")
    func pathsAreRelativeToTheFile() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("topo-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("t.yaml").path
        try """
        broker:
          journal: state/journal.db
        pools:
          default:
            engine: synthetic
        gateway:
          data_dir: gw-data
          curve_key: keys/gw.key
        security:
          broker_key: /etc/compass/broker.key
          allow_producers: keys/producers
        """.write(toFile: file, atomically: true, encoding: .utf8)
        let t = try Topology.load(path: file)
        #expect(t.broker.journal == dir.path + "/state/journal.db")
        #expect(t.gateway?.dataDirectory == dir.path + "/gw-data")
        #expect(t.gateway?.curveKey == dir.path + "/keys/gw.key")
        #expect(t.security?.brokerKey == "/etc/compass/broker.key")
        #expect(t.security?.allowProducers == dir.path + "/keys/producers")
    }

    @Test func gpusAreCutIntoDisjointGroupsOfTP() throws {
        let t = try Topology.parse("""
        pools:
          big:
            engine: vllm
            tp: 2
            gpus: [0, 1, 2, 3, 4, 5, 6, 7]
        """)
        #expect(t.pools[0].groups == [[0, 1], [2, 3], [4, 5], [6, 7]])
        #expect(t.pools[0].workers == 4)
    }

    func problems(_ yaml: String) -> [TopologyProblem] {
        do {
            _ = try Topology.parse(yaml, file: "t.yaml")
            return []
        } catch let error as TopologyError {
            return error.problems
        } catch {
            return [TopologyProblem(file: "t.yaml", message: "\(error)")]
        }
    }

    @Test func errorsCarryLineNumbersAndAllAreReported() {
        let found = problems("""
        broker:
          frontend: http://x
        pools:
          a:
            tp: zero
            engine: tensorflow
            colour: blue
        """)
        #expect(found.count == 4)
        #expect(found.contains { $0.line == 2 && $0.message.contains("endpoint") })
        #expect(found.contains { $0.line == 5 && $0.message.contains("tp") })
        #expect(found.contains { $0.line == 6 && $0.message.contains("engine") })
        #expect(found.contains { $0.line == 7 && $0.message.contains("colour") })
        #expect(found.allSatisfy { $0.description.hasPrefix("t.yaml:") })
    }

    @Test func gpuCountMustFitTP() {
        #expect(problems("pools:\n  a:\n    tp: 4\n    gpus: [0, 1, 2]\n").first?.message.contains("groups of tp=4") == true)
        #expect(problems("pools:\n  a:\n    gpus: [0, 0]\n").first?.message.contains("twice") == true)
        let shared = problems("pools:\n  a:\n    gpus: [0]\n  b:\n    gpus: [0]\n")
        #expect(shared.first?.message.contains("both pool") == true)
    }

    @Test func yamlSyntaxErrorsHaveALine() {
        let found = problems("pools:\n  a: [unclosed\n")
        #expect(found.count == 1)
        #expect(found[0].line != nil)
        #expect(found[0].message.contains("YAML"))
    }

    @Test func emptyFileExplainsWhatIsMissing() {
        #expect(problems("").first?.message.contains("pools") == true)
    }
}
