import CompassProtocol
import Foundation
import Yams

extension Topology {
    /// Reads and validates a topology file.
    public static func load(path: String) throws -> Topology {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw TopologyError(problems: [TopologyProblem(file: path, message: "cannot read the file (does it exist?)")])
        }
        var topology = try parse(String(decoding: data, as: UTF8.self), file: path)
        // File paths (keys, the journal, the gateway's data) are relative to the topology file,
        // so `compass up` works from any directory.
        let base = URL(fileURLWithPath: path).deletingLastPathComponent()
        func resolve(_ p: String) -> String { p.hasPrefix("/") ? p : base.appendingPathComponent(p).standardized.path }
        if var s = topology.security {
            s.brokerKey = resolve(s.brokerKey)
            s.allowProducers = s.allowProducers.map(resolve)
            s.allowWorkers = s.allowWorkers.map(resolve)
            s.workerKey = s.workerKey.map(resolve)
            topology.security = s
        }
        if var g = topology.gateway {
            g.curveKey = g.curveKey.map(resolve)
            g.dataDirectory = g.dataDirectory.map(resolve)
            topology.gateway = g
        }
        topology.broker.journal = topology.broker.journal.map { $0.hasPrefix(":") ? $0 : resolve($0) }
        return topology
    }

    /// Parses and validates topology YAML; throws `TopologyError` listing every problem.
    public static func parse(_ yaml: String, file: String = "topology.yaml") throws -> Topology {
        let root: Node?
        do {
            root = try Yams.compose(yaml: yaml)
        } catch let error as YamlError {
            throw TopologyError(problems: [TopologyParser.problem(from: error, file: file)])
        }
        var parser = TopologyParser(file: file)
        let topology = parser.read(root)
        if !parser.problems.isEmpty { throw TopologyError(problems: parser.problems) }
        return topology
    }
}

/// Walks the YAML node tree, collecting problems with line numbers.
struct TopologyParser {
    let file: String
    var problems: [TopologyProblem] = []

    static func problem(from error: YamlError, file: String) -> TopologyProblem {
        switch error {
        case .scanner(_, let problem, let mark, _), .parser(_, let problem, let mark, _), .composer(_, let problem, let mark, _):
            return TopologyProblem(file: file, line: mark.line, column: mark.column, message: "YAML syntax: \(problem)")
        default:
            return TopologyProblem(file: file, message: "YAML: \(error)")
        }
    }

    mutating func fail(_ node: Node?, _ message: String) {
        problems.append(TopologyProblem(file: file, line: node?.mark?.line, column: node?.mark?.column, message: message))
    }

    /// The mapping's entries by key, reporting unknown keys.
    mutating func fields(_ node: Node, _ path: String, allowed: [String]) -> [String: Node] {
        guard let mapping = node.mapping else {
            fail(node, "\(path) must be a mapping of settings")
            return [:]
        }
        var out: [String: Node] = [:]
        for (key, value) in mapping {
            guard let name = key.string else { fail(key, "\(path): keys must be strings"); continue }
            if !allowed.contains(name) {
                fail(key, "\(path).\(name) is not a known setting (known: \(allowed.joined(separator: ", ")))")
                continue
            }
            out[name] = value
        }
        return out
    }

    mutating func string(_ node: Node?, _ path: String) -> String? {
        guard let node else { return nil }
        guard case .scalar(let scalar) = node else { fail(node, "\(path) must be a string"); return nil }
        return scalar.string
    }

    mutating func positive(_ node: Node?, _ path: String, allowZero: Bool = false) -> Int? {
        guard let node else { return nil }
        guard let value = node.int, value > 0 || (allowZero && value == 0) else {
            fail(node, "\(path) must be a \(allowZero ? "non-negative" : "positive") integer, got '\(node.string ?? "?")'")
            return nil
        }
        return value
    }

    mutating func endpoint(_ node: Node?, _ path: String) -> String? {
        guard let value = string(node, path) else { return nil }
        let schemes = ["tcp://", "ipc://", "inproc://"]
        guard schemes.contains(where: { value.hasPrefix($0) }), value.count > 6 else {
            fail(node, "\(path) must be a ZeroMQ endpoint such as tcp://127.0.0.1:5555 or ipc:///tmp/compass.sock, got '\(value)'")
            return nil
        }
        return value
    }

    mutating func stringMap(_ node: Node?, _ path: String) -> [String: String] {
        guard let node else { return [:] }
        guard let mapping = node.mapping else { fail(node, "\(path) must be a mapping of key: value"); return [:] }
        var out: [String: String] = [:]
        for (key, value) in mapping {
            guard let k = key.string, case .scalar(let scalar) = value else { fail(key, "\(path) entries must be key: value"); continue }
            out[k] = scalar.string
        }
        return out
    }

    mutating func read(_ root: Node?) -> Topology {
        var topology = Topology()
        guard let root else {
            fail(nil, "the file is empty; it needs at least a 'pools:' section")
            return topology
        }
        let top = fields(root, "topology", allowed: ["broker", "pools", "security", "gateway"])
        if let b = top["broker"] { topology.broker = readBroker(b) }
        if let s = top["security"] { topology.security = readSecurity(s) }
        if let g = top["gateway"] { topology.gateway = readGateway(g) }
        guard let poolsNode = top["pools"] else {
            fail(root, "missing 'pools:': declare at least one pool")
            return topology
        }
        guard let mapping = poolsNode.mapping, !mapping.isEmpty else {
            fail(poolsNode, "pools must be a mapping of pool name to settings, with at least one pool")
            return topology
        }
        var seenGPUs: [Int: String] = [:]
        for (key, value) in mapping {
            guard let name = key.string, WireProtocol.isValidPoolName(name) else {
                fail(key, "pool name '\(key.string ?? "?")' is invalid (1-64 characters of A-Z a-z 0-9 . _ -)")
                continue
            }
            let pool = readPool(name, value)
            for gpu in pool.gpus {
                if let other = seenGPUs[gpu] {
                    fail(value, "GPU \(gpu) is given to both pool '\(other)' and pool '\(name)'; a GPU belongs to one worker")
                }
                seenGPUs[gpu] = name
            }
            topology.pools.append(pool)
        }
        return topology
    }

    mutating func readBroker(_ node: Node) -> Topology.Broker {
        var b = Topology.Broker()
        let f = fields(node, "broker", allowed: ["frontend", "backend", "heartbeat_ms", "liveness", "max_pool_bytes",
                                                 "max_payload_bytes", "lease_ms", "max_attempts", "journal"])
        if let v = endpoint(f["frontend"], "broker.frontend") { b.frontend = v }
        if let v = endpoint(f["backend"], "broker.backend") { b.backend = v }
        if let v = positive(f["heartbeat_ms"], "broker.heartbeat_ms") { b.heartbeatMilliseconds = UInt64(v) }
        if let v = positive(f["liveness"], "broker.liveness") { b.liveness = UInt64(v) }
        b.maxPoolBytes = positive(f["max_pool_bytes"], "broker.max_pool_bytes")
        b.maxPayloadBytes = positive(f["max_payload_bytes"], "broker.max_payload_bytes")
        b.leaseMilliseconds = positive(f["lease_ms"], "broker.lease_ms", allowZero: true).map(UInt64.init)
        b.maxAttempts = positive(f["max_attempts"], "broker.max_attempts")
        if let journal = string(f["journal"], "broker.journal"), journal != "none" { b.journal = journal }
        if b.frontend == b.backend { fail(f["backend"] ?? node, "broker.frontend and broker.backend must differ") }
        return b
    }

    mutating func readGateway(_ node: Node) -> Topology.Gateway {
        var g = Topology.Gateway()
        // `gateway:` with nothing under it: the defaults.
        if case .scalar(let scalar) = node, scalar.string.isEmpty || scalar.string == "~" { return g }
        let f = fields(node, "gateway", allowed: ["listen", "max_batch", "max_wait_ms", "deadline_ms", "data_dir", "curve_key"])
        if let listen = string(f["listen"], "gateway.listen") {
            let port = listen.split(separator: ":").last.flatMap { Int($0) }
            if listen.contains(":"), let port, (0...65535).contains(port), !listen.hasPrefix(":") { g.listen = listen } else {
                fail(f["listen"], "gateway.listen must be HOST:PORT, e.g. 127.0.0.1:8000, got '\(listen)'")
            }
        }
        g.maxBatch = positive(f["max_batch"], "gateway.max_batch")
        g.maxWaitMilliseconds = positive(f["max_wait_ms"], "gateway.max_wait_ms", allowZero: true)
        g.deadlineMilliseconds = positive(f["deadline_ms"], "gateway.deadline_ms", allowZero: true)
        g.dataDirectory = string(f["data_dir"], "gateway.data_dir")
        g.curveKey = string(f["curve_key"], "gateway.curve_key")
        return g
    }

    mutating func readSecurity(_ node: Node) -> Topology.Security? {
        let f = fields(node, "security", allowed: ["broker_key", "allow_producers", "allow_workers", "worker_key"])
        guard let key = string(f["broker_key"], "security.broker_key") else {
            fail(node, "security needs broker_key: the broker's secret key file (compass keys new broker)")
            return nil
        }
        return Topology.Security(brokerKey: key, allowProducers: string(f["allow_producers"], "security.allow_producers"),
                                 allowWorkers: string(f["allow_workers"], "security.allow_workers"),
                                 workerKey: string(f["worker_key"], "security.worker_key"))
    }

    mutating func readPool(_ name: String, _ node: Node) -> Topology.Pool {
        var p = Topology.Pool(name: name)
        let path = "pools.\(name)"
        let f = fields(node, path, allowed: ["engine", "model", "tp", "workers", "gpus", "credit", "engine_args", "env",
                                             "startup_timeout_ms", "progress_timeout_ms", "max_attempts"])
        let engines = ["synthetic", "hf", "vllm", "openai", "exec"]
        if let engine = string(f["engine"], "\(path).engine") {
            if engines.contains(engine) { p.engine = engine } else {
                fail(f["engine"], "\(path).engine '\(engine)' is not one of \(engines.joined(separator: ", "))")
            }
        }
        if let model = string(f["model"], "\(path).model") { p.model = model }
        if let tp = positive(f["tp"], "\(path).tp") { p.tp = tp }
        if let credit = positive(f["credit"], "\(path).credit") { p.credit = credit }
        p.engineArguments = stringMap(f["engine_args"], "\(path).engine_args")
        p.environment = stringMap(f["env"], "\(path).env")
        p.startupTimeoutMilliseconds = positive(f["startup_timeout_ms"], "\(path).startup_timeout_ms").map(UInt64.init)
        p.progressTimeoutMilliseconds = positive(f["progress_timeout_ms"], "\(path).progress_timeout_ms", allowZero: true).map(UInt64.init)
        p.maxAttempts = positive(f["max_attempts"], "\(path).max_attempts")
        let workers = positive(f["workers"], "\(path).workers")
        if let gpusNode = f["gpus"] {
            if let list = gpusNode.sequence {
                for item in list {
                    if let gpu = item.int, gpu >= 0 { p.gpus.append(gpu) } else { fail(item, "\(path).gpus entries must be GPU indices (0, 1, ...)") }
                }
                if Set(p.gpus).count != p.gpus.count { fail(gpusNode, "\(path).gpus lists a GPU twice") }
            } else {
                fail(gpusNode, "\(path).gpus must be a list of GPU indices, e.g. [0, 1, 2, 3]")
            }
        }
        if !p.gpus.isEmpty {
            if p.gpus.count % p.tp != 0 {
                fail(f["gpus"], "\(path): \(p.gpus.count) GPUs cannot be cut into groups of tp=\(p.tp); give a multiple of \(p.tp)")
            }
            let groups = p.gpus.count / p.tp
            if let workers, workers != groups {
                fail(f["workers"], "\(path).workers is \(workers) but \(p.gpus.count) GPUs with tp=\(p.tp) make \(groups) workers; drop 'workers' or fix it")
            }
            p.workers = groups
        } else {
            if p.engine == "vllm" || p.engine == "hf", p.tp > 1 {
                fail(f["tp"] ?? node, "\(path): tp=\(p.tp) needs 'gpus:' listing \(p.tp) GPUs per worker")
            }
            p.workers = workers ?? 1
        }
        return p
    }
}
