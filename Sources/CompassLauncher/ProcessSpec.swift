import CompassTopology

/// One process the launcher runs and keeps running.
public struct ProcessSpec: Sendable, Equatable {
    public enum Role: Sendable, Equatable { case broker, worker(pool: String, gpus: [Int]), gateway }

    /// A short name for logs: `broker`, `default.0`, `llama70b.1` ...
    public var name: String
    public var role: Role
    public var executable: String
    public var arguments: [String]
    /// Added to the launcher's own environment.
    public var environment: [String: String]

    /// The command line, shell-quoted, as `--dry-run` prints it.
    public var commandLine: String {
        let env = environment.sorted { $0.key < $1.key }.map { "\($0.key)=\(shellQuote($0.value))" }
        return (env + [executable] + arguments.map(shellQuote)).joined(separator: " ")
    }
}

/// Quotes a word for a POSIX shell when it needs it.
public func shellQuote(_ word: String) -> String {
    let safe = word.allSatisfy { $0.isLetter || $0.isNumber || "-_./:=,@%+".contains($0) }
    if safe && !word.isEmpty { return word }
    return "'" + word.replacingOccurrences(of: "'", with: "'\\''") + "'"
}

/// Turns a topology into the processes that run it.
public enum Plan {
    /// The broker, one worker per GPU group of each pool, and the gateway when the topology has
    /// one. `binDirectory` holds the executables.
    public static func processes(for topology: Topology, binDirectory: String, logLevel: String = "info") -> [ProcessSpec] {
        let b = topology.broker
        var brokerArgs = ["--frontend", b.frontend, "--backend", b.backend,
                          "--heartbeat-ms", "\(b.heartbeatMilliseconds)", "--liveness", "\(b.liveness)", "--log-level", logLevel]
        for pool in topology.pools {
            brokerArgs += ["--pool", pool.name]
            if let n = pool.maxAttempts { brokerArgs += ["--pool-attempts", "\(pool.name)=\(n)"] }
        }
        if let v = b.maxPoolBytes { brokerArgs += ["--max-pool-bytes", "\(v)"] }
        if let v = b.maxPayloadBytes { brokerArgs += ["--max-payload-bytes", "\(v)"] }
        if let v = b.leaseMilliseconds { brokerArgs += ["--lease-ms", "\(v)"] }
        if let v = b.maxAttempts { brokerArgs += ["--max-attempts", "\(v)"] }
        if let v = b.journal { brokerArgs += ["--journal", v] }
        if let s = topology.security {
            brokerArgs += ["--curve-secret", s.brokerKey]
            if let v = s.allowProducers { brokerArgs += ["--allow-producers", v] }
            if let v = s.allowWorkers { brokerArgs += ["--allow-workers", v] }
        }
        var specs = [ProcessSpec(name: "broker", role: .broker, executable: "\(binDirectory)/compass-broker",
                                 arguments: brokerArgs, environment: [:])]
        for pool in topology.pools {
            for (index, group) in pool.groups.enumerated() {
                var args = ["--broker", b.backend, "--pool", pool.name, "--tp", "\(pool.tp)", "--engine", pool.engine,
                            "--credit", "\(pool.credit)", "--log-level", logLevel]
                if !group.isEmpty { args += ["--gpus", group.map(String.init).joined(separator: ",")] }
                if !pool.model.isEmpty { args += ["--model", pool.model] }
                for (key, value) in pool.engineArguments.sorted(by: { $0.key < $1.key }) { args += ["--engine-arg", "\(key)=\(value)"] }
                if let v = pool.startupTimeoutMilliseconds { args += ["--startup-timeout-ms", "\(v)"] }
                if let v = pool.progressTimeoutMilliseconds { args += ["--progress-timeout-ms", "\(v)"] }
                if let s = topology.security {
                    args += ["--curve-server-key", s.brokerPublicKey]
                    if let key = s.workerKey { args += ["--curve-key", key] }
                }
                specs.append(ProcessSpec(name: "\(pool.name).\(index)", role: .worker(pool: pool.name, gpus: group),
                                         executable: "\(binDirectory)/compass-worker", arguments: args,
                                         environment: pool.environment))
            }
        }
        if let g = topology.gateway {
            // The gateway connects where the broker binds; a wildcard bind is reached on loopback.
            let broker = b.frontend.replacingOccurrences(of: "tcp://*:", with: "tcp://127.0.0.1:")
            var args = ["gateway", "--broker", broker, "--listen", g.listen, "--log-level", logLevel]
            if let v = g.maxBatch { args += ["--max-batch", "\(v)"] }
            if let v = g.maxWaitMilliseconds { args += ["--max-wait-ms", "\(v)"] }
            if let v = g.deadlineMilliseconds { args += ["--deadline-ms", "\(v)"] }
            if let v = g.dataDirectory { args += ["--data-dir", v] }
            if let s = topology.security {
                args += ["--curve-server-key", s.brokerPublicKey]
                if let key = g.curveKey { args += ["--curve-key", key] }
            }
            specs.append(ProcessSpec(name: "gateway", role: .gateway, executable: "\(binDirectory)/compass", arguments: args, environment: [:]))
        }
        return specs
    }
}
