import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A child process, started through `setpriv --pdeathsig KILL` so that the kernel kills it if the
/// bench dies for any reason. Its stdout and stderr go to files in the run's directory.
final class Child {
    let pid: pid_t
    let name: String
    let outPath: String
    let errPath: String
    private(set) var exited = false
    private(set) var status: Int32 = 0

    init(_ argv: [String], name: String, dir: String) throws {
        self.name = name
        outPath = "\(dir)/\(name).out"
        errPath = "\(dir)/\(name).err"
        var fa = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&fa)
        defer { posix_spawn_file_actions_destroy(&fa) }
        posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&fa, 1, outPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_addopen(&fa, 2, errPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        let full = ["/usr/bin/setpriv", "--pdeathsig", "KILL"] + argv
        let cargs: [UnsafeMutablePointer<CChar>?] = full.map { strdup($0) } + [nil]
        defer { for p in cargs { free(p) } }
        var pid: pid_t = 0
        let rc = cargs.withUnsafeBufferPointer { buf in
            posix_spawn(&pid, full[0], &fa, nil, UnsafeMutablePointer(mutating: buf.baseAddress!), environ)
        }
        guard rc == 0 else { throw BenchError("cannot start \(argv.joined(separator: " ")): \(String(cString: strerror(rc)))") }
        self.pid = pid
        Child.live.append(self)
    }

    /// Every child not yet reaped, for the final sweep.
    nonisolated(unsafe) static var live: [Child] = []

    var isRunning: Bool {
        if exited { return false }
        var st: Int32 = 0
        let r = waitpid(pid, &st, WNOHANG)
        if r == pid || r == -1 { exited = true; status = st; return false }
        return true
    }

    /// Waits for a stdout line starting with `prefix`; returns it, or throws after `timeoutMs`.
    func waitLine(_ prefix: String, timeoutMs: Int = 20_000) throws -> String {
        let until = monoNs() + UInt64(timeoutMs) * 1_000_000
        while monoNs() < until {
            if let text = try? String(contentsOfFile: outPath, encoding: .utf8),
               let line = text.split(separator: "\n").first(where: { $0.hasPrefix(prefix) }) {
                return String(line)
            }
            if !isRunning {
                let err = (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? ""
                throw BenchError("\(name) exited (status \(status)) before printing '\(prefix)': \(err.suffix(2000))")
            }
            usleep(5_000)
        }
        throw BenchError("\(name) did not print '\(prefix)' within \(timeoutMs) ms")
    }

    /// SIGTERM (or `signal`), then SIGKILL after `graceMs`; reaps it.
    func stop(signal sig: Int32 = SIGTERM, graceMs: Int = 3000) {
        guard isRunning else { return }
        kill(pid, sig)
        let until = monoNs() + UInt64(graceMs) * 1_000_000
        while isRunning && monoNs() < until { usleep(2_000) }
        if isRunning {
            kill(pid, SIGKILL)
            var st: Int32 = 0
            waitpid(pid, &st, 0)
            exited = true
        }
        Child.live.removeAll { $0 === self }
    }

    static func stopAll() {
        for c in live { c.stop(signal: SIGKILL, graceMs: 1000) }
        live.removeAll()
    }
}

/// A running compass-broker (or, with `cbroker`, the minimal C broker of bench/cbroker) with its endpoints.
final class BrokerProc {
    let child: Child
    let frontend: String
    let backend: String
    let journal: String?

    init(bin: String, dir: String, name: String, transport: String, heartbeatMs: Int = 1000,
         journal: String? = nil, journalSync: String = "full", extra: [String] = [], cbroker: String? = nil) throws {
        let fe: String, be: String
        if transport == "ipc" {
            fe = "ipc://\(dir)/\(name)-f.sock"
            be = "ipc://\(dir)/\(name)-b.sock"
        } else {
            fe = "tcp://127.0.0.1:*"
            be = "tcp://127.0.0.1:*"
        }
        var args = [cbroker ?? bin + "/compass-broker", "--frontend", fe, "--backend", be, "--pool", "bench", "--heartbeat-ms", "\(heartbeatMs)"]
        if cbroker == nil {
            if let journal { args += ["--journal", journal, "--journal-sync", journalSync] } else { args += ["--journal", "none"] }
        } else if journal != nil || !extra.isEmpty {
            throw BenchError("the C broker has no journal and no options beyond its endpoints, heartbeat and pool")
        }
        child = try Child(args + extra, name: name, dir: dir)
        let line = try child.waitLine(cbroker == nil ? "compass-broker listening" : "compass-cbroker listening")
        func field(_ key: String) throws -> String {
            guard let part = line.split(separator: " ").first(where: { $0.hasPrefix(key + "=") }) else { throw BenchError("no \(key) in: \(line)") }
            return String(part.dropFirst(key.count + 1))
        }
        frontend = try field("frontend")
        backend = try field("backend")
        self.journal = journal
    }

    func stop() { child.stop(signal: SIGTERM, graceMs: 5000) }
}

/// Bytes of a file (0 if absent).
func fileSize(_ path: String) -> Int {
    ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? NSNumber)?.intValue ?? 0
}

/// CPU seconds (user + system) a process has used so far, from /proc.
func cpuSeconds(_ pid: pid_t) -> Double {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = text.lastIndex(of: ")") else { return 0 }
    let fields = text[text.index(after: close)...].split(separator: " ")
    // fields[0] is state (field 3); utime is field 14, stime field 15.
    guard fields.count > 13, let u = Double(fields[11]), let s = Double(fields[12]) else { return 0 }
    return (u + s) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

/// Machine-wide CPU time (all cores) in seconds, busy and total, from /proc/stat.
func machineCPU() -> (busy: Double, total: Double) {
    guard let text = try? String(contentsOfFile: "/proc/stat", encoding: .utf8),
          let line = text.split(separator: "\n").first else { return (0, 0) }
    let v = line.split(separator: " ").dropFirst().compactMap { Double($0) }
    guard v.count >= 5 else { return (0, 0) }
    let tck = Double(sysconf(Int32(_SC_CLK_TCK)))
    let total = v.reduce(0, +) / tck
    let idle = (v[3] + v[4]) / tck
    return (total - idle, total)
}

func loadAverage() -> String {
    ((try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8)) ?? "").split(separator: " ").prefix(3).joined(separator: " ")
}
