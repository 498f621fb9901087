import CompassTopology

/// What `compass render` needs beyond the topology: where workers reach the broker from other
/// hosts, and the scheduler's own settings.
public struct RenderOptions: Sendable, Equatable {
    /// Where workers reach the broker's backend: `HOST`, `HOST:PORT` or `tcp://HOST:PORT`. The port
    /// defaults to the topology's backend port. Nil: the topology's backend as it is, which works
    /// only when it names a host other machines can reach.
    public var brokerAddress: String?
    /// The worker executable as the job runs it (on PATH by default).
    public var workerExecutable = "compass-worker"
    /// The broker executable (Kubernetes `--with-broker`).
    public var brokerExecutable = "compass-broker"
    /// Seconds between the scheduler's SIGTERM and its SIGKILL: the worker drains within them.
    public var drainSeconds = 90
    public var logLevel = "info"
    /// The topology file's name, quoted in the files' comments.
    public var source = "topology.yaml"

    // Slurm
    public var partition: String?
    public var account: String?
    /// `--time`, as Slurm takes it (e.g. 24:00:00 or 2-00:00:00).
    public var timeLimit: String?
    /// CPUs per task; default 4 per GPU (at least 4), 2 for a pool without GPUs.
    public var cpusPerTask: Int?
    /// `--mem`, as Slurm takes it (e.g. 200G); nil leaves the cluster's default.
    public var memory: String?

    // Kubernetes
    public var image = "compass:latest"
    public var namespace: String?
    /// Also a Deployment, Service (and, with a journal, a PersistentVolumeClaim) for the broker;
    /// workers then reach it at the Service's name unless `brokerAddress` says otherwise.
    public var includeBroker = false

    public init() {}

    /// The smallest `drainSeconds` accepted: the worker keeps `stopMarginSeconds` to stop its engine.
    public static let minimumDrainSeconds = 30
    static let stopMarginSeconds = 20
    /// How long the broker waits for a worker that said BYE before it declares it lost and requeues
    /// its running batch (the scheduler's `drainMilliseconds`, 60 s, not a broker flag): the worker
    /// hands its batch back a little before that, so the batch is requeued without losing an attempt.
    static let brokerDrainLimitSeconds = 60

    /// What the worker's `--drain-ms` gets: the drain window less time to stop the engine and say
    /// BYE, and no more than the broker waits for a draining worker.
    var workerDrainMilliseconds: Int { min(drainSeconds - Self.stopMarginSeconds, Self.brokerDrainLimitSeconds - 5) * 1000 }
}

/// One file `compass render` writes.
public struct RenderedFile: Sendable, Equatable {
    public var name: String
    public var contents: String
    public var executable: Bool
}

/// The files for one scheduler, and what the user should know about them.
public struct Rendering: Sendable, Equatable {
    public var files: [RenderedFile]
    /// Warnings and hints (a broker bound to loopback, a pool without GPUs ...), one per line.
    public var notes: [String]
}

/// Why a topology cannot be rendered as asked, in words for the user.
public struct RenderError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Job specs for the schedulers clusters already run: one job per tensor-parallel group, each
/// running `compass-worker --tp N` against the broker.
public enum Render {
    /// The schedulers `compass render` writes for.
    public static let targets = ["slurm", "k8s"]

    /// The rendering for `target` ("slurm" or "k8s").
    public static func render(_ target: String, _ topology: Topology, options: RenderOptions) throws -> Rendering {
        switch target {
        case "slurm": return try slurm(topology, options: options)
        case "k8s", "kubernetes": return try kubernetes(topology, options: options)
        default: throw RenderError("unknown target '\(target)'; use one of \(targets.joined(separator: ", "))")
        }
    }

    // MARK: - Worker command lines

    /// A pool's worker as a job runs it: the command line of `Plan.processes` (the same flags as
    /// `compass up`), with the broker address workers use from other hosts, `--gpus auto` (the
    /// scheduler hands each job its own GPUs) and a drain time that fits the scheduler's grace.
    static func workerCommand(_ pool: Topology.Pool, _ topology: Topology, broker: String, options: RenderOptions) -> [String] {
        let specs = Plan.processes(for: topology, binDirectory: "", logLevel: options.logLevel)
        // Every group of a pool has the same command line but for --gpus; take the first.
        guard let spec = specs.first(where: { if case .worker(pool.name, _) = $0.role { return true }; return false }) else {
            return [options.workerExecutable]
        }
        var args = replacing("--broker", with: broker, in: spec.arguments)
        if !pool.gpus.isEmpty { args = replacing("--gpus", with: "auto", in: args) }
        args += ["--drain-ms", "\(options.workerDrainMilliseconds)"]
        return [options.workerExecutable] + args
    }

    /// `args` with the value after `flag` set to `value` (appended when the flag is absent).
    static func replacing(_ flag: String, with value: String, in args: [String]) -> [String] {
        var out = args
        if let i = out.firstIndex(of: flag), i + 1 < out.count {
            out[i + 1] = value
        } else {
            out += [flag, value]
        }
        return out
    }

    /// The variables the worker sets for its engine anyway (spawn, no NVLink multicast); written
    /// into the job so that what the job runs with can be read in one place.
    static let engineEnvironment: [(String, String)] = [
        ("VLLM_WORKER_MULTIPROC_METHOD", "spawn"),
        ("NCCL_NVLS_ENABLE", "0"),
        ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"),
        ("NVSHMEM_DISABLE_NVLS", "1"),
    ]

    /// The job's environment: the engine defaults, then the pool's `env:` (which wins), in order.
    static func environment(_ pool: Topology.Pool) throws -> [(String, String)] {
        for key in pool.environment.keys where !isEnvironmentName(key) {
            throw RenderError("pools.\(pool.name).env: '\(key)' is not a variable name a shell can export (letters, digits, '_'; not starting with a digit)")
        }
        var out = engineEnvironment.filter { pool.environment[$0.0] == nil }
        out += pool.environment.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        return out
    }

    static func isEnvironmentName(_ s: String) -> Bool {
        guard let first = s.unicodeScalars.first, first.value < 128, first == "_" || (first.properties.isAlphabetic) else { return false }
        return s.unicodeScalars.allSatisfy { $0.value < 128 && ($0 == "_" || $0.properties.isAlphabetic || ("0"..."9").contains($0)) }
    }

    /// Notes about pools that run on no GPU although their engine wants one.
    static func poolNotes(_ topology: Topology) -> [String] {
        topology.pools.compactMap { pool in
            guard pool.gpus.isEmpty, pool.engine == "vllm" || pool.engine == "hf" else { return nil }
            return "pool '\(pool.name)' (engine \(pool.engine)) lists no 'gpus:', so its jobs ask for no GPU and its engine runs on CPU; " +
                "list gpus (their count, a multiple of tp, sets the number of jobs) to get GPU jobs"
        }
    }

    // MARK: - The broker's address as workers see it

    /// A ZeroMQ endpoint taken apart: tcp has a host and maybe a port ("*" or missing: nil).
    struct Endpoint: Equatable {
        var scheme: String
        var host: String?
        var port: Int?

        init(_ endpoint: String) {
            guard let range = endpoint.range(of: "://") else {
                scheme = ""
                return
            }
            scheme = String(endpoint[..<range.lowerBound])
            guard scheme == "tcp" else { return }
            let (h, p) = Endpoint.split(String(endpoint[range.upperBound...]))
            host = h
            port = p.flatMap { Int($0) }
        }

        /// HOST:PORT, [V6]:PORT, HOST or a bare IPv6 address into host and port text.
        static func split(_ address: String) -> (host: String, port: String?) {
            if address.hasPrefix("["), let close = address.firstIndex(of: "]") {
                let host = String(address[...close])
                let rest = address[address.index(after: close)...]
                return (host, rest.hasPrefix(":") ? String(rest.dropFirst()) : nil)
            }
            let colons = address.filter { $0 == ":" }.count
            if colons == 1, let colon = address.firstIndex(of: ":") {
                return (String(address[..<colon]), String(address[address.index(after: colon)...]))
            }
            if colons > 1 { return ("[\(address)]", nil) } // a bare IPv6 address
            return (address, nil)
        }

        var isLoopback: Bool { host.map(Endpoint.isLoopback) ?? false }
        var isWildcard: Bool { host.map(Endpoint.isWildcard) ?? false }

        static func isLoopback(_ host: String) -> Bool { host == "localhost" || host.hasPrefix("127.") || host == "[::1]" }
        static func isWildcard(_ host: String) -> Bool { ["*", "0.0.0.0", "[::]", "[*]", "[0:0:0:0:0:0:0:0]"].contains(host) }
    }

    /// The backend endpoint workers on other hosts connect to, and notes about the broker's bind.
    /// `serviceHost` is the host to use when no address is given (the broker's Kubernetes Service).
    static func workerBrokerEndpoint(_ topology: Topology, address: String?, serviceHost: String?,
                                     scheduler: String, source: String) throws -> (String, [String]) {
        let backend = topology.broker.backend
        let bound = Endpoint(backend)
        let boundPort = bound.port.map(String.init) ?? "5556"
        var notes: [String] = []
        let host: String
        var port: Int?
        if let address, !address.isEmpty {
            var text = address
            if text.hasPrefix("tcp://") { text.removeFirst(6) }
            if text.contains("://") {
                throw RenderError("--broker-address '\(address)' must be HOST, HOST:PORT or tcp://HOST:PORT: workers on other hosts reach the broker over TCP")
            }
            let (h, portText) = Endpoint.split(text)
            guard !h.isEmpty, h != "[]" else { throw RenderError("--broker-address '\(address)' names no host") }
            if Endpoint.isWildcard(h) {
                throw RenderError("--broker-address '\(address)' is a wildcard, an address to bind, not one to connect to; give the broker host's name or address")
            }
            if let portText {
                guard let p = Int(portText), (1...65535).contains(p) else {
                    throw RenderError("--broker-address '\(address)': '\(portText)' is not a port number")
                }
                port = p
            }
            host = h
            if bound.scheme != "tcp" {
                notes.append("broker.backend in \(source) is \(backend): the broker must bind TCP for \(scheduler) workers to reach it, " +
                             "e.g. broker.backend: tcp://0.0.0.0:\(port.map(String.init) ?? "5556") (or compass-broker --backend tcp://0.0.0.0:\(port.map(String.init) ?? "5556"))")
            } else if bound.isLoopback {
                notes.append("broker.backend in \(source) binds \(bound.host ?? "") (this host only): set it to tcp://0.0.0.0:\(boundPort) " +
                             "(or start compass-broker --backend tcp://0.0.0.0:\(boundPort)) so that workers on other hosts can connect")
            }
        } else if let serviceHost {
            host = serviceHost
            port = bound.port ?? 5556
        } else {
            guard bound.scheme == "tcp" else {
                throw RenderError("""
                    broker.backend in \(source) is \(backend), a socket on the broker's own host; \(scheduler) workers run on other hosts and cannot reach it.
                    Make the broker bind TCP (broker.backend: tcp://0.0.0.0:5556, or compass-broker --backend tcp://0.0.0.0:5556) \
                    and give --broker-address HOST: the broker host's name or address as the compute nodes see it (HOST:PORT for another port).
                    """)
            }
            guard !bound.isLoopback, !bound.isWildcard else {
                let what = bound.isLoopback ? "a loopback address only the broker's own host can reach" : "a wildcard, an address to bind and not one to connect to"
                let bind = bound.isLoopback ? " The broker must also bind an address they can reach: broker.backend: tcp://0.0.0.0:\(boundPort)." : ""
                throw RenderError("""
                    broker.backend in \(source) is \(backend), \(what); \(scheduler) workers run on other hosts.
                    Give --broker-address HOST: the broker host's name or address as the compute nodes see it \
                    (e.g. --broker-address login1.cluster.example; the port \(boundPort) is kept unless you give HOST:PORT).\(bind)
                    """)
            }
            host = bound.host ?? ""
        }
        guard let port = port ?? bound.port else {
            throw RenderError("broker.backend in \(source) is \(backend), which names no fixed port; give --broker-address HOST:PORT")
        }
        return ("tcp://\(host):\(port)", notes)
    }
}
