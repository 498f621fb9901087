import CompassTopology

extension Render {
    /// The name workers reach the broker at when `--with-broker` renders it (its Service).
    public static let brokerServiceName = "compass-broker"

    /// One Deployment per pool, one pod per tensor-parallel group (`replicas` = groups), each pod
    /// one `compass-worker --tp N --gpus auto` with `nvidia.com/gpu: N`; with `includeBroker`, also
    /// the broker's Deployment and Service (and a PersistentVolumeClaim for its journal).
    public static func kubernetes(_ topology: Topology, options: RenderOptions) throws -> Rendering {
        try check(options)
        if let namespace = options.namespace, !isDNSLabel(namespace) {
            throw RenderError("--namespace '\(namespace)' is not a Kubernetes namespace name (lower-case letters, digits and '-', at most 63)")
        }
        let (broker, notes) = try workerBrokerEndpoint(topology, address: options.brokerAddress,
                                                       serviceHost: options.includeBroker ? brokerServiceName : nil,
                                                       scheduler: "Kubernetes", source: options.source)
        var files: [RenderedFile] = []
        if options.includeBroker {
            files.append(RenderedFile(name: "\(brokerServiceName).yaml", contents: brokerManifests(topology, options: options), executable: false))
        }
        var used: Set<String> = [brokerServiceName]
        for pool in topology.pools {
            var name = "compass-\(dnsLabel(pool.name, limit: 40))"
            var n = 2
            while used.contains(name) {
                name = "compass-\(dnsLabel(pool.name, limit: 36))-\(n)"
                n += 1
            }
            used.insert(name)
            let text = try workerManifest(pool, topology, name: name, broker: broker, options: options)
            files.append(RenderedFile(name: "compass-\(pool.name).yaml", contents: text, executable: false))
        }
        return Rendering(files: files, notes: notes + poolNotes(topology))
    }

    /// What the image must hold, as the manifests say it (comment and annotation): for a pool's
    /// workers (`engine`), or for the broker (nil).
    static func imageRequirement(engine: String?) -> String {
        guard let engine else {
            return "The image must contain compass-broker on PATH, with libzmq (bench/gpu/bundle.sh makes a self-contained bundle)."
        }
        let base = "The image must contain compass-worker on PATH, with libzmq (bench/gpu/bundle.sh makes a self-contained bundle)"
        let adapters = " and the engine adapters (bin/engines, found through COMPASS_ENGINES_DIR or COMPASS_HOME)"
        switch engine {
        case "vllm":
            return base + adapters + ", and the engine's Python stack: Python with torch and vLLM (COMPASS_PYTHON or python3) and the CUDA libraries they use."
        case "hf":
            return base + adapters + ", and the engine's Python stack: Python with torch and transformers (COMPASS_PYTHON or python3) and the CUDA libraries they use."
        case "openai":
            return base + adapters + ", and Python 3 (the adapter needs only its standard library)."
        case "exec":
            return base + ", and the program the pool's engine_args command runs."
        default:
            return base + "."
        }
    }

    static func metadata(_ name: String, labels: [RenderYAML.Entry], annotations: [RenderYAML.Entry] = [], options: RenderOptions) -> RenderYAML {
        var entries = [RenderYAML.Entry("name", .string(name))]
        if let ns = options.namespace { entries.append(.init("namespace", .string(ns))) }
        entries.append(.init("labels", .map(labels)))
        if !annotations.isEmpty { entries.append(.init("annotations", .map(annotations))) }
        return .map(entries)
    }

    static func workerManifest(_ pool: Topology.Pool, _ topology: Topology, name: String, broker: String, options: RenderOptions) throws -> String {
        let replicas = pool.groups.count
        let gpu = !pool.gpus.isEmpty
        let file = "compass-\(pool.name).yaml"
        let environment = try environment(pool)
        let labels: [RenderYAML.Entry] = [
            .init("app.kubernetes.io/name", .string("compass-worker")),
            .init("app.kubernetes.io/part-of", .string("compass")),
            .init("compass/pool", .string(dnsLabel(pool.name, limit: 63))),
        ]
        let image = imageRequirement(engine: pool.engine)
        var header: [String] = []
        header.append("compass workers of pool '\(pool.name)' on Kubernetes, written by `compass render k8s` from \(options.source).")
        if gpu {
            header.append("One pod per tensor-parallel group: \(replicas) replica\(replicas == 1 ? "" : "s"), each one `compass-worker --tp \(pool.tp)`")
            header.append("with \(pool.tp) GPU\(pool.tp == 1 ? "" : "s") of its own (nvidia.com/gpu: \(pool.tp)), serving pool '\(pool.name)' of the broker at")
        } else {
            header.append("\(replicas) replica\(replicas == 1 ? "" : "s"), each one `compass-worker` without GPUs (engine \(pool.engine)),")
            header.append("serving pool '\(pool.name)' of the broker at")
        }
        header.append("\(broker). Workers may join and leave at any time.")
        header.append("")
        header.append(contentsOf: usage([
            ("kubectl apply -f \(file)", "start the pool: \(replicas) worker\(replicas == 1 ? "" : "s")"),
            ("kubectl scale deployment/\(name) --replicas=\(replicas + 2)", "more workers, or fewer (those drain first)"),
            ("kubectl delete -f \(file)", "stop them all; every pod drains first"),
        ]).map { String($0.dropFirst(2)) })
        header.append("")
        header.append("On SIGTERM (scale down, delete, rollout, node drain) a worker says BYE, hands its queued batches back,")
        header.append("finishes the running one (for at most \(options.workerDrainMilliseconds / 1000) s, --drain-ms; a longer one is handed back too,")
        header.append("before the broker's \(RenderOptions.brokerDrainLimitSeconds) s wait for a draining worker ends) and exits, within")
        header.append("terminationGracePeriodSeconds (\(options.drainSeconds)). A pod killed anyway loses nothing: the broker requeues its batches.")
        header.append("")
        header.append(contentsOf: wrap(image, width: 100))
        if gpu {
            header.append("`--gpus auto`: the device plugin puts exactly the pod's \(pool.tp) GPU\(pool.tp == 1 ? "" : "s") in the container and the worker claims them.")
        }

        var container: [RenderYAML.Entry] = [
            .init("name", .string("worker")),
            .init("image", .string(options.image)),
            .init("command", .list(workerCommand(pool, topology, broker: broker, options: options).map { .string($0) })),
            .init("env", .list(environment.map { key, value in .map([.init("name", .string(key)), .init("value", .string(value))]) }),
                  comment: "Spawn, never fork, and no NVLink multicast (the worker sets these for its engine anyway), then the pool's env."),
        ]
        if gpu {
            container.append(.init("resources", .map([.init("limits", .map([.init("nvidia.com/gpu", .int(pool.tp))]))])))
            container.append(.init("volumeMounts", .list([.map([.init("name", .string("dshm")), .init("mountPath", .string("/dev/shm"))])])))
        }
        var podSpec: [RenderYAML.Entry] = [
            .init("terminationGracePeriodSeconds", .int(options.drainSeconds),
                  comment: "Time to drain after SIGTERM: the running batch may finish, queued ones go back to the broker."),
            .init("shareProcessNamespace", .bool(true),
                  comment: "The pod's pause process is PID 1 and reaps what the engine's processes leave; SIGTERM still goes to compass-worker."),
            .init("containers", .list([.map(container)])),
        ]
        if gpu {
            podSpec.append(.init("volumes", .list([.map([.init("name", .string("dshm")), .init("emptyDir", .map([.init("medium", .string("Memory"))]))])]),
                                 comment: "NCCL and the engine's processes share memory through /dev/shm; a container's default 64 MiB is too small."))
        }
        var spec: [RenderYAML.Entry] = [
            .init("replicas", .int(replicas), comment: "One per tensor-parallel group."),
            .init("selector", .map([.init("matchLabels", .map(Array(labels.filter { $0.key != "app.kubernetes.io/part-of" })))])),
        ]
        if gpu {
            spec.append(.init("strategy", .map([
                .init("type", .string("RollingUpdate")),
                .init("rollingUpdate", .map([.init("maxSurge", .int(0)), .init("maxUnavailable", .int(1))])),
            ]), comment: "GPUs are usually all taken: replace pods one at a time rather than start extra ones."))
        }
        spec.append(.init("template", .map([
            .init("metadata", .map([.init("labels", .map(labels))])),
            .init("spec", .map(podSpec)),
        ])))
        let document = RenderYAML.map([
            .init("apiVersion", .string("apps/v1")),
            .init("kind", .string("Deployment")),
            .init("metadata", metadata(name, labels: labels, annotations: [
                .init("compass/pool", .string(pool.name)),
                .init("compass/broker", .string(broker)),
                .init("compass/image", .string(image)),
            ], options: options)),
            .init("spec", .map(spec)),
        ])
        return header.map { "# \($0)".trimmingTrailingSpaces() }.joined(separator: "\n") + "\n" + document.text
    }

    /// The broker: a Service for both sockets, a single-replica Deployment (Recreate: never two
    /// brokers at once), and, when the topology has a journal, a claim for it.
    static func brokerManifests(_ topology: Topology, options: RenderOptions) -> String {
        let b = topology.broker
        let frontendPort = Endpoint(b.frontend).port ?? 5555
        let backendPort = Endpoint(b.backend).port ?? 5556
        let journalDirectory = "/var/lib/compass"
        var args = Plan.processes(for: topology, binDirectory: "", logLevel: options.logLevel).first { $0.role == .broker }?.arguments ?? []
        args = replacing("--frontend", with: "tcp://0.0.0.0:\(frontendPort)", in: args)
        args = replacing("--backend", with: "tcp://0.0.0.0:\(backendPort)", in: args)
        if let journal = b.journal {
            let base = journal.split(separator: "/").last.map(String.init) ?? "compass-journal.db"
            args = replacing("--journal", with: "\(journalDirectory)/\(base)", in: args)
        }
        let labels: [RenderYAML.Entry] = [
            .init("app.kubernetes.io/name", .string("compass-broker")),
            .init("app.kubernetes.io/part-of", .string("compass")),
        ]
        let selector = RenderYAML.map([labels[0]])
        let ports: [(String, Int)] = [("frontend", frontendPort), ("backend", backendPort)]

        var header = [
            "The compass broker on Kubernetes, written by `compass render k8s --with-broker` from \(options.source).",
            "Workers reach it at tcp://\(brokerServiceName):\(backendPort) (the Service below); producers at",
            "tcp://\(brokerServiceName):\(frontendPort) inside the cluster (outside: kubectl port-forward svc/\(brokerServiceName) \(frontendPort),",
            "or make the Service a LoadBalancer).",
        ]
        header.append(b.journal == nil
            ? "No journal (broker.journal is unset): a broker restart loses queued batches; producers re-submit what they await."
            : "Its journal lives on the claim \(brokerServiceName)-journal: accepted batches survive a restart of the pod.")
        header.append(contentsOf: wrap(imageRequirement(engine: nil), width: 100))

        var documents: [RenderYAML] = []
        documents.append(.map([
            .init("apiVersion", .string("v1")),
            .init("kind", .string("Service")),
            .init("metadata", metadata(brokerServiceName, labels: labels, options: options)),
            .init("spec", .map([
                .init("selector", selector),
                .init("ports", .list(ports.map { name, port in
                    .map([.init("name", .string(name)), .init("port", .int(port)), .init("targetPort", .int(port))])
                })),
            ])),
        ]))
        if b.journal != nil {
            documents.append(.map([
                .init("apiVersion", .string("v1")),
                .init("kind", .string("PersistentVolumeClaim")),
                .init("metadata", metadata("\(brokerServiceName)-journal", labels: labels, options: options)),
                .init("spec", .map([
                    .init("accessModes", .list([.string("ReadWriteOnce")])),
                    .init("resources", .map([.init("requests", .map([.init("storage", .string("10Gi"))]))]),
                          comment: "Queued payloads and unacknowledged results (broker.max_pool_bytes per pool) with room to spare."),
                ])),
            ]))
        }
        var container: [RenderYAML.Entry] = [
            .init("name", .string("broker")),
            .init("image", .string(options.image)),
            .init("command", .list(([options.brokerExecutable] + args).map { .string($0) })),
            .init("ports", .list(ports.map { name, port in .map([.init("name", .string(name)), .init("containerPort", .int(port))]) })),
        ]
        var podSpec: [RenderYAML.Entry] = [
            .init("terminationGracePeriodSeconds", .int(30)),
        ]
        if b.journal != nil {
            container.append(.init("volumeMounts", .list([.map([.init("name", .string("journal")), .init("mountPath", .string(journalDirectory))])])))
        }
        podSpec.append(.init("containers", .list([.map(container)])))
        if b.journal != nil {
            podSpec.append(.init("volumes", .list([.map([
                .init("name", .string("journal")),
                .init("persistentVolumeClaim", .map([.init("claimName", .string("\(brokerServiceName)-journal"))])),
            ])])))
        }
        documents.append(.map([
            .init("apiVersion", .string("apps/v1")),
            .init("kind", .string("Deployment")),
            .init("metadata", metadata(brokerServiceName, labels: labels, annotations: [.init("compass/image", .string(imageRequirement(engine: nil)))], options: options)),
            .init("spec", .map([
                .init("replicas", .int(1), comment: "One broker; Recreate stops the old one before the new one starts."),
                .init("strategy", .map([.init("type", .string("Recreate"))])),
                .init("selector", .map([.init("matchLabels", selector)])),
                .init("template", .map([
                    .init("metadata", .map([.init("labels", .map(labels))])),
                    .init("spec", .map(podSpec)),
                ])),
            ])),
        ]))
        return header.map { "# \($0)".trimmingTrailingSpaces() }.joined(separator: "\n") + "\n" +
            documents.map(\.text).joined(separator: "---\n")
    }

    /// `name` as a DNS label: lower case, [a-z0-9-], starting and ending alphanumeric, at most `limit`.
    static func dnsLabel(_ name: String, limit: Int) -> String {
        var out = ""
        for c in name.lowercased().unicodeScalars {
            let ok = c.value < 128 && (("a"..."z").contains(c) || ("0"..."9").contains(c))
            if ok { out.unicodeScalars.append(c) } else if !out.hasSuffix("-") && !out.isEmpty { out += "-" }
        }
        out = String(out.prefix(limit))
        while out.hasSuffix("-") { out.removeLast() }
        return out.isEmpty ? "pool" : out
    }

    static func isDNSLabel(_ s: String) -> Bool { !s.isEmpty && s.count <= 63 && dnsLabel(s, limit: 63) == s }

    /// `text` cut into lines of at most `width` characters at spaces.
    static func wrap(_ text: String, width: Int) -> [String] {
        var lines: [String] = []
        var line = ""
        for word in text.split(separator: " ") {
            if !line.isEmpty && line.count + 1 + word.count > width {
                lines.append(line)
                line = ""
            }
            line += (line.isEmpty ? "" : " ") + word
        }
        if !line.isEmpty { lines.append(line) }
        return lines
    }
}
