import CompassTopology

extension Render {
    /// One batch script per pool: a job array with one task per tensor-parallel group, each task
    /// `exec`ing one `compass-worker --tp N --gpus auto` on the GPUs Slurm gives it.
    public static func slurm(_ topology: Topology, options: RenderOptions) throws -> Rendering {
        try check(options)
        let (broker, notes) = try workerBrokerEndpoint(topology, address: options.brokerAddress, serviceHost: nil,
                                                       scheduler: "Slurm", source: options.source)
        var files: [RenderedFile] = []
        for pool in topology.pools {
            files.append(RenderedFile(name: "compass-\(pool.name).sbatch",
                                      contents: try slurmScript(pool, topology, broker: broker, options: options), executable: true))
        }
        return Rendering(files: files, notes: notes + poolNotes(topology))
    }

    static func check(_ options: RenderOptions) throws {
        guard options.drainSeconds >= RenderOptions.minimumDrainSeconds else {
            throw RenderError("--drain-seconds must be at least \(RenderOptions.minimumDrainSeconds): the worker keeps \(RenderOptions.stopMarginSeconds) s of it to stop its engine and say BYE")
        }
        if let n = options.cpusPerTask, n < 1 { throw RenderError("--cpus-per-task must be at least 1") }
        // Values written into #SBATCH lines must stay one word each.
        for (flag, value) in [("--partition", options.partition), ("--account", options.account), ("--time", options.timeLimit), ("--mem", options.memory)] {
            if let value, value.isEmpty || value.contains(where: { $0.isWhitespace || $0 == "#" || $0 == "'" || $0 == "\"" }) {
                throw RenderError("\(flag) '\(value)' must be one word")
            }
        }
    }

    /// CPUs per task: the option, else 4 per GPU (a TP group's engine runs a process per GPU plus
    /// tokenization), else 2 for a pool without GPUs.
    static func cpusPerTask(_ pool: Topology.Pool, _ options: RenderOptions) -> Int {
        if let n = options.cpusPerTask { return n }
        return pool.gpus.isEmpty ? 2 : max(4, 4 * pool.tp)
    }

    static func slurmScript(_ pool: Topology.Pool, _ topology: Topology, broker: String, options: RenderOptions) throws -> String {
        let tasks = pool.groups.count
        let gpu = !pool.gpus.isEmpty
        let file = "compass-\(pool.name).sbatch"
        let drain = options.drainSeconds
        let environment = try environment(pool)
        var s: [String] = []
        s.append("#!/bin/bash")
        s.append("# compass workers of pool '\(pool.name)' on Slurm, written by `compass render slurm` from \(options.source).")
        if gpu {
            s.append("# A job array with one task per tensor-parallel group: \(tasks) task\(tasks == 1 ? "" : "s"), each one")
            s.append("# `compass-worker --tp \(pool.tp)` on \(pool.tp) GPU\(pool.tp == 1 ? "" : "s") of one node, serving pool '\(pool.name)' of the broker")
        } else {
            s.append("# A job array with one task per worker: \(tasks) task\(tasks == 1 ? "" : "s"), each one `compass-worker` without")
            s.append("# GPUs (engine \(pool.engine)), serving pool '\(pool.name)' of the broker")
        }
        s.append("# at \(broker). Workers may join and leave at any time: the broker gives work to those connected.")
        s.append("#")
        s.append(contentsOf: usage([
            ("sbatch \(file)", "start the pool: \(tasks) worker\(tasks == 1 ? "" : "s")"),
            ("sbatch --array=\(tasks)-\(tasks + 1) \(file)", "two more workers, at any time"),
            ("scancel --batch --signal=TERM JOBID_TASK", "drain one worker (e.g. 1234_2): it finishes its batch and exits"),
            ("scancel JOBID", "stop them all (SIGTERM; SIGKILL after the cluster's KillWait)"),
        ]))
        s.append("#")
        s.append("# --signal=B:TERM@\(drain): \(drain) s before the time limit, Slurm sends SIGTERM to this script, which by then")
        s.append("# is compass-worker itself (exec, below). The worker drains: it says BYE, hands its queued batches back to")
        s.append("# the broker, finishes the running one (for at most \(options.workerDrainMilliseconds / 1000) s, --drain-ms; a longer one is handed")
        s.append("# back too, before the broker's \(RenderOptions.brokerDrainLimitSeconds) s wait for a draining worker ends) and exits before the limit.")
        s.append("# Whatever is cut short anyway is requeued by the broker once the worker's heartbeats stop: nothing is lost.")
        if options.timeLimit == nil { s.append("# The time limit is the partition's default (render with --time to set one).") }
        if options.memory == nil && gpu {
            s.append("# Host memory is the cluster's default (render with --mem to set it): loading a model may need about its size.")
        }
        s.append("#SBATCH --job-name=compass-\(pool.name)")
        s.append("#SBATCH --array=0-\(tasks - 1)")
        s.append("#SBATCH --nodes=1")
        s.append("#SBATCH --ntasks=1")
        if gpu { s.append("#SBATCH --gres=gpu:\(pool.tp)") }
        s.append("#SBATCH --cpus-per-task=\(cpusPerTask(pool, options))")
        if let v = options.memory { s.append("#SBATCH --mem=\(v)") }
        if let v = options.timeLimit { s.append("#SBATCH --time=\(v)") }
        if let v = options.partition { s.append("#SBATCH --partition=\(v)") }
        if let v = options.account { s.append("#SBATCH --account=\(v)") }
        s.append("#SBATCH --output=compass-\(pool.name)-%A_%a.out")
        s.append("#SBATCH --signal=B:TERM@\(drain)")
        s.append("")
        s.append("set -euo pipefail")
        s.append("")
        if gpu {
            s.append("# Slurm gives this task its own \(pool.tp) GPU\(pool.tp == 1 ? "" : "s") (--gres=gpu:\(pool.tp)) and names them in CUDA_VISIBLE_DEVICES.")
            s.append("# `--gpus auto` makes the worker claim \(pool.tp) of exactly those: no GPU index is written here, because the")
            s.append("# node and its GPUs are Slurm's choice. The claim's lock files are this job's own: Slurm already keeps")
            s.append("# jobs off each other's GPUs, and where it constrains devices every job sees its GPUs as 0, 1, ...")
            s.append("export COMPASS_LOCK_DIR=\"${TMPDIR:-/tmp}/compass-gpu-locks.${SLURM_JOB_ID:-$$}\"")
            s.append("")
        }
        s.append("# Engine processes are spawned, never forked, and NVLink multicast stays off. The worker sets these for")
        s.append("# its engine anyway (unless already set); they are written here so the job's environment reads in one place.")
        let defaults = environment.filter { key, _ in engineEnvironment.contains { $0.0 == key } }
        let poolEnv = environment.filter { key, _ in pool.environment[key] != nil }
        for (key, value) in defaults { s.append("export \(key)=\(shellQuote(value))") }
        if !poolEnv.isEmpty {
            s.append("# The pool's env: from \(options.source).")
            for (key, value) in poolEnv { s.append("export \(key)=\(shellQuote(value))") }
        }
        s.append("")
        s.append("# exec: the worker replaces this shell, so Slurm's SIGTERM reaches it (and starts its drain) directly.")
        s.append(contentsOf: commandLines(workerCommand(pool, topology, broker: broker, options: options), prefix: "exec "))
        return s.joined(separator: "\n") + "\n"
    }

    /// Commands and what they do as aligned comment lines ("#   command   # what").
    static func usage(_ rows: [(String, String)]) -> [String] {
        let width = rows.map(\.0.count).max() ?? 0
        return rows.map { "#   " + $0.0 + String(repeating: " ", count: width - $0.0.count) + "   # " + $0.1 }
    }

    /// `words` as shell lines, one flag and its value per line, joined by backslash-newlines.
    static func commandLines(_ words: [String], prefix: String) -> [String] {
        guard let first = words.first else { return [] }
        var lines = [prefix + shellQuote(first)]
        var i = 1
        while i < words.count {
            var line = "  " + shellQuote(words[i])
            if words[i].hasPrefix("--"), i + 1 < words.count, !words[i + 1].hasPrefix("--") {
                line += " " + shellQuote(words[i + 1])
                i += 1
            }
            lines.append(line)
            i += 1
        }
        return lines.enumerated().map { $0.offset < lines.count - 1 ? $0.element + " \\" : $0.element }
    }
}
