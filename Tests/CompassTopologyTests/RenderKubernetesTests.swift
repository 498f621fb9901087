@testable import CompassLauncher
import CompassTopology
import Foundation
import Testing
import Yams

@Suite("compass render k8s")
struct RenderKubernetesTests {
    func documents(_ text: String) throws -> [[String: Any]] {
        try Yams.load_all(yaml: text).map { try #require($0 as? [String: Any]) }
    }

    func dig(_ value: Any?, _ path: String...) -> Any? {
        var current = value
        for key in path {
            if let index = Int(key), let list = current as? [Any] {
                current = index < list.count ? list[index] : nil
            } else {
                current = (current as? [String: Any])?[key]
            }
        }
        return current
    }

    func deployment(_ yaml: String = eightGPUsTP2, _ options: RenderOptions = renderOptions()) throws -> (text: String, doc: [String: Any]) {
        let rendering = try Render.kubernetes(try Topology.parse(yaml), options: options)
        let text = try #require(rendering.files.first).contents
        let docs = try documents(text)
        #expect(docs.count == 1)
        return (text, docs[0])
    }

    @Test func eightGPUsWithTP2MakeFourReplicasOfTwoGPUs() throws {
        let rendering = try Render.kubernetes(try Topology.parse(eightGPUsTP2), options: renderOptions())
        #expect(rendering.files.map(\.name) == ["compass-llama8b.yaml"])
        let doc = try #require(try documents(rendering.files[0].contents).first)
        #expect(doc["apiVersion"] as? String == "apps/v1")
        #expect(doc["kind"] as? String == "Deployment")
        #expect(dig(doc, "metadata", "name") as? String == "compass-llama8b")
        #expect(dig(doc, "spec", "replicas") as? Int == 4)
        let container = try #require(dig(doc, "spec", "template", "spec", "containers", "0") as? [String: Any])
        #expect(dig(container, "resources", "limits", "nvidia.com/gpu") as? Int == 2)
        let command = try #require(container["command"] as? [String])
        #expect(command.first == "compass-worker")
        func value(_ flag: String) -> String? { command.firstIndex(of: flag).map { command[$0 + 1] } }
        #expect(value("--tp") == "2")
        #expect(value("--broker") == "tcp://head.cluster.example:5556")
        #expect(value("--gpus") == "auto")
        #expect(value("--pool") == "llama8b")
        #expect(value("--engine") == "vllm")
        #expect(value("--model") == "/models/Llama-3.1-8B-Instruct")
        #expect(value("--credit") == "3")
        #expect(value("--drain-ms") == "55000")
        #expect(command.contains("gpu_memory_utilization=0.90") && command.contains("max_model_len=8192"))
        #expect(dig(doc, "spec", "template", "spec", "terminationGracePeriodSeconds") as? Int == 90)
        // The selector selects the pods the template makes.
        let selector = try #require(dig(doc, "spec", "selector", "matchLabels") as? [String: String])
        let podLabels = try #require(dig(doc, "spec", "template", "metadata", "labels") as? [String: String])
        #expect(!selector.isEmpty && selector.allSatisfy { podLabels[$0.key] == $0.value })
        // /dev/shm in memory for NCCL.
        #expect(dig(container, "volumeMounts", "0", "mountPath") as? String == "/dev/shm")
        #expect(dig(doc, "spec", "template", "spec", "volumes", "0", "emptyDir", "medium") as? String == "Memory")
        // What the image must hold is said in an annotation and a comment.
        #expect((dig(doc, "metadata", "annotations", "compass/image") as? String)?.contains("Python") == true)
        #expect(rendering.files[0].contents.hasPrefix("# compass workers of pool 'llama8b'"))
    }

    @Test func environmentValuesStayStrings() throws {
        // Kubernetes refuses `value: 0`; every value must come back as a string.
        let (_, doc) = try deployment()
        let env = try #require(dig(doc, "spec", "template", "spec", "containers", "0", "env") as? [[String: Any]])
        var values: [String: String] = [:]
        for entry in env {
            let name = try #require(entry["name"] as? String)
            values[name] = try #require(entry["value"] as? String, "\(name) is not a string")
        }
        #expect(values == ["VLLM_WORKER_MULTIPROC_METHOD": "spawn", "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                           "NVSHMEM_DISABLE_NVLS": "1", "NCCL_DEBUG": "WARN"])
    }

    @Test func aPoolWithoutGPUsAsksForNone() throws {
        let (_, doc) = try deployment("pools:\n  cpu:\n    workers: 3\n    engine: openai\n    engine_args: {base_url: 'http://llm:8000/v1'}\n", renderOptions())
        #expect(dig(doc, "spec", "replicas") as? Int == 3)
        #expect(dig(doc, "spec", "template", "spec", "containers", "0", "resources") == nil)
        let command = try #require(dig(doc, "spec", "template", "spec", "containers", "0", "command") as? [String])
        #expect(!command.contains("--gpus"))
        #expect(command.contains("base_url=http://llm:8000/v1"))
    }

    @Test func poolNamesBecomeValidObjectNames() throws {
        let rendering = try Render.kubernetes(try Topology.parse("""
        pools:
          Llama_70B.v2: {}
          llama-70b-v2: {}
          compass-broker: {}
        """), options: renderOptions())
        let names = try rendering.files.map { file -> String in
            try #require(dig(try documents(file.contents).first, "metadata", "name") as? String)
        }
        #expect(names == ["compass-llama-70b-v2", "compass-llama-70b-v2-2", "compass-compass-broker"])
        let annotated = try #require(dig(try documents(rendering.files[0].contents).first, "metadata", "annotations", "compass/pool") as? String)
        #expect(annotated == "Llama_70B.v2")
        for name in names { #expect(Render.isDNSLabel(name)) }
    }

    @Test func withBrokerAddsItsServiceAndDeploymentAndWorkersUseTheService() throws {
        var options = renderOptions(nil)
        options.includeBroker = true
        options.namespace = "evals"
        options.image = "registry.example/compass:1.0"
        let yaml = eightGPUsTP2.replacingOccurrences(of: "pools:", with: "  journal: /var/tmp/compass.db\npools:")
        let rendering = try Render.kubernetes(try Topology.parse(yaml), options: options)
        #expect(rendering.files.map(\.name) == ["compass-broker.yaml", "compass-llama8b.yaml"])
        let docs = try documents(rendering.files[0].contents)
        #expect(docs.map { $0["kind"] as? String } == ["Service", "PersistentVolumeClaim", "Deployment"])
        #expect(docs.allSatisfy { dig($0, "metadata", "namespace") as? String == "evals" })
        let ports = try #require(dig(docs[0], "spec", "ports") as? [[String: Any]])
        #expect(ports.compactMap { $0["port"] as? Int } == [5555, 5556])
        let broker = docs[2]
        #expect(dig(broker, "spec", "replicas") as? Int == 1)
        #expect(dig(broker, "spec", "strategy", "type") as? String == "Recreate")
        let command = try #require(dig(broker, "spec", "template", "spec", "containers", "0", "command") as? [String])
        func value(_ flag: String) -> String? { command.firstIndex(of: flag).map { command[$0 + 1] } }
        #expect(command.first == "compass-broker")
        #expect(value("--frontend") == "tcp://0.0.0.0:5555")
        #expect(value("--backend") == "tcp://0.0.0.0:5556")
        #expect(value("--journal") == "/var/lib/compass/compass.db")
        #expect(value("--pool") == "llama8b")
        #expect(dig(broker, "spec", "template", "spec", "containers", "0", "image") as? String == "registry.example/compass:1.0")
        let serviceSelector = try #require(dig(docs[0], "spec", "selector") as? [String: String])
        let brokerLabels = try #require(dig(broker, "spec", "template", "metadata", "labels") as? [String: String])
        #expect(serviceSelector.allSatisfy { brokerLabels[$0.key] == $0.value })
        let worker = try #require(try documents(rendering.files[1].contents).first)
        let workerCommand = try #require(dig(worker, "spec", "template", "spec", "containers", "0", "command") as? [String])
        #expect(workerCommand[workerCommand.firstIndex(of: "--broker")! + 1] == "tcp://compass-broker:5556")
        #expect(rendering.notes.isEmpty)
    }

    @Test func aLoopbackBackendWithoutAnAddressIsAnError() throws {
        #expect(throws: RenderError.self) { try Render.kubernetes(try Topology.parse(eightGPUsTP2), options: renderOptions(nil)) }
    }
}

@Suite("compass render: YAML writing")
struct RenderYAMLTests {
    @Test func scalarsReadBackAsTheSameStrings() throws {
        let awkward = ["", "yes", "No", "on", "null", "~", "0", "0.90", "1e3", "0x1F", ".inf", "-", "- x", "a: b", "#x", "x #y",
                       "tcp://h:1", "it's \"quoted\"", "two\nlines", "tab\there", "é", "@at", "`tick`", "{a}", "[a]", "*ref", "&anchor",
                       "!tag", "|", ">", "%dir", "ends:", "--broker", "-x", "-1", "-.5", "---", "--", "--5", "-inf", "/path/to/model", "key=value", "a,b", "compass/pool", "  padded  "]
        let doc = RenderYAML.map(awkward.enumerated().map { .init("k\($0.offset)", .string($0.element)) })
        let back = try #require(try Yams.load(yaml: doc.text) as? [String: Any])
        for (i, s) in awkward.enumerated() {
            #expect(back["k\(i)"] as? String == s, "\(s.debugDescription) came back as \(String(describing: back["k\(i)"]))")
        }
    }

    @Test func nestedListsAndMapsKeepTheirShape() throws {
        let doc = RenderYAML.map([
            .init("a", .list([.map([.init("x", .int(1)), .init("y", .list([.string("p"), .string("q")]))]), .string("s")]), comment: "a comment"),
            .init("b", .map([.init("c", .bool(true)), .init("d", .list([])), .init("e", .map([]))])),
        ])
        let back = try #require(try Yams.load(yaml: doc.text) as? [String: Any])
        let a = try #require(back["a"] as? [Any])
        #expect((a[0] as? [String: Any])?["x"] as? Int == 1)
        #expect((a[0] as? [String: Any])?["y"] as? [String] == ["p", "q"])
        #expect(a[1] as? String == "s")
        let b = try #require(back["b"] as? [String: Any])
        #expect(b["c"] as? Bool == true)
        #expect((b["d"] as? [Any])?.isEmpty == true)
        #expect((b["e"] as? [String: Any])?.isEmpty == true)
        #expect(doc.text.contains("# a comment\na:\n"))
    }
}
