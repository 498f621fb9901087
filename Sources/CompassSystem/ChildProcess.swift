#if canImport(Glibc)
import Glibc
#endif

/// How a child process ended.
public enum ExitStatus: Sendable, Equatable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)

    public var description: String {
        switch self {
        case .exited(let code): "exited with status \(code)"
        case .signaled(let sig): "killed by signal \(sig) (\(signalName(sig)))"
        }
    }

    /// Exited with status 0.
    public var isSuccess: Bool { self == .exited(0) }
}

/// A short name for a signal number, e.g. `SIGKILL`.
public func signalName(_ sig: Int32) -> String {
    switch sig {
    case SIGKILL: "SIGKILL"
    case SIGTERM: "SIGTERM"
    case SIGINT: "SIGINT"
    case SIGSEGV: "SIGSEGV"
    case SIGABRT: "SIGABRT"
    case SIGBUS: "SIGBUS"
    case SIGSTOP: "SIGSTOP"
    case SIGHUP: "SIGHUP"
    case SIGPIPE: "SIGPIPE"
    case SIGILL: "SIGILL"
    case SIGFPE: "SIGFPE"
    default: "signal \(sig)"
    }
}

/// What the child's file descriptors start as.
public enum FileAction: Sendable {
    /// The child gets the parent's `source` as its `target` (e.g. a pipe end as fd 3).
    case inherit(source: Int32, as: Int32)
    /// The child's `target` is `path` opened with `flags` (e.g. a log file as fd 1).
    case open(path: String, flags: Int32, as: Int32)
}

/// A process started with posix_spawn (never fork), optionally in its own process group so that it
/// and everything it starts can be signalled at once.
public final class ChildProcess: @unchecked Sendable {
    // @unchecked: `pid` is immutable; `status` is only touched by the owner's thread (documented).
    public let pid: pid_t
    public let executable: String
    public private(set) var status: ExitStatus?

    /// Starts `executable` (a path, or a name looked up in PATH) with `arguments` (argv[1...]).
    ///
    /// - Parameters:
    ///   - environment: the complete environment, or nil to inherit this process's.
    ///   - newProcessGroup: make the child the leader of a new process group (pgid = pid).
    ///   - files: descriptor set-up; every other descriptor of ours is closed in the child when it
    ///     was opened with close-on-exec, which compass does for all of its own.
    public init(
        executable: String,
        arguments: [String],
        environment: [String: String]? = nil,
        newProcessGroup: Bool = true,
        files: [FileAction] = []
    ) throws {
        self.executable = executable
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }

        var flags = Int32(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF)
        if newProcessGroup {
            flags |= Int32(POSIX_SPAWN_SETPGROUP)
            posix_spawnattr_setpgroup(&attr, 0)
        }
        posix_spawnattr_setflags(&attr, Int16(flags))
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attr, &empty)
        // Reset the dispositions a parent may have changed (SIGPIPE is ignored in compass processes).
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for sig in [SIGPIPE, SIGTERM, SIGINT, SIGHUP, SIGCHLD, SIGUSR1, SIGUSR2] { sigaddset(&defaults, sig) }
        posix_spawnattr_setsigdefault(&attr, &defaults)

        var temporaries: [Int32] = []
        defer { for fd in temporaries { close(fd) } }
        for action in files {
            switch action {
            case .inherit(let source, let target):
                // dup2 runs in order, so a source that is also another action's target could be
                // overwritten first, and dup2 onto itself would keep close-on-exec set. A fresh
                // copy above every target avoids both.
                guard let copy = try systemCall("fcntl", "F_DUPFD_CLOEXEC", body: { fcntl(source, F_DUPFD_CLOEXEC, 64) }) else {
                    throw SystemError(code: EAGAIN, call: "fcntl")
                }
                temporaries.append(copy)
                posix_spawn_file_actions_adddup2(&actions, copy, target)
            case .open(let path, let oflags, let target):
                posix_spawn_file_actions_addopen(&actions, target, path, oflags, 0o644)
            }
        }

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        let envStrings: [String]
        if let environment {
            envStrings = environment.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        } else {
            envStrings = ChildProcess.currentEnvironment()
        }
        let envp = envStrings.map { strdup($0) } + [nil]
        defer { for p in envp { free(p) } }

        var child: pid_t = 0
        let rc: Int32 = argv.withUnsafeBufferPointer { argvBuf in
            envp.withUnsafeBufferPointer { envBuf in
                let a = UnsafeMutablePointer(mutating: argvBuf.baseAddress!)
                let e = UnsafeMutablePointer(mutating: envBuf.baseAddress!)
                return executable.contains("/")
                    ? posix_spawn(&child, executable, &actions, &attr, a, e)
                    : posix_spawnp(&child, executable, &actions, &attr, a, e)
            }
        }
        if rc != 0 { throw SystemError(code: rc, call: "posix_spawn", detail: executable) }
        pid = child
    }

    /// This process's environment as `KEY=VALUE` strings.
    public static func currentEnvironment() -> [String] {
        var result: [String] = []
        var p = environ
        while let entry = p.pointee {
            result.append(String(cString: entry))
            p += 1
        }
        return result
    }

    /// This process's environment as a dictionary.
    public static func environmentDictionary() -> [String: String] {
        var dict: [String: String] = [:]
        for entry in currentEnvironment() {
            guard let eq = entry.firstIndex(of: "=") else { continue }
            dict[String(entry[..<eq])] = String(entry[entry.index(after: eq)...])
        }
        return dict
    }

    /// Sends `sig` to the child alone. Harmless if it has already exited but is not yet reaped.
    public func signal(_ sig: Int32) {
        if status == nil { kill(pid, sig) }
    }

    /// Sends `sig` to the child's whole process group (the child and everything it started).
    public func signalGroup(_ sig: Int32) {
        // The group can outlive its leader (orphaned grandchildren), so signal it even after exit.
        kill(-pid, sig)
    }

    /// Reaps the child if it has exited; returns its status, or nil while it runs.
    @discardableResult
    public func poll() -> ExitStatus? {
        if let status { return status }
        var raw: Int32 = 0
        let rc = waitpid(pid, &raw, WNOHANG)
        if rc == pid {
            status = ChildProcess.decode(raw)
        } else if rc == -1 && errno == ECHILD {
            status = .exited(-1) // reaped elsewhere
        }
        return status
    }

    /// Blocks until the child exits, polling every 10 ms; returns nil if `timeoutSeconds` passes first.
    @discardableResult
    public func wait(timeoutSeconds: Double = .infinity) -> ExitStatus? {
        let deadline = timeoutSeconds.isFinite
            ? MonotonicClock.nanoseconds() + UInt64(timeoutSeconds * 1e9) : UInt64.max
        while true {
            if let s = poll() { return s }
            if MonotonicClock.nanoseconds() >= deadline { return nil }
            usleep(10_000)
        }
    }

    /// Whether any process of the child's group is still alive (the leader may be a zombie).
    public var groupAlive: Bool {
        kill(-pid, 0) == 0
    }

    static func decode(_ raw: Int32) -> ExitStatus {
        // The WIFEXITED/WEXITSTATUS macros are not imported into Swift; these are their definitions.
        let sig = raw & 0x7f
        if sig == 0 { return .exited((raw >> 8) & 0xff) }
        return .signaled(sig)
    }
}
