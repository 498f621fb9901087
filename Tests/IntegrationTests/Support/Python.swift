import CompassSystem
import Foundation

/// The repository root (for bin/engines), from this file's location.
let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent().path

/// The Python that has the adapters' dependencies: $COMPASS_PYTHON (bin/test sets it) or .venv.
func enginePython() throws -> String {
    if let python = ProcessInfo.processInfo.environment["COMPASS_PYTHON"], FileManager.default.isExecutableFile(atPath: python) {
        return python
    }
    let venv = "\(repositoryRoot)/.venv/bin/python"
    guard FileManager.default.isExecutableFile(atPath: venv) else {
        throw HarnessError("no Python environment for the engine adapters: run bin/test (it creates .venv), or set COMPASS_PYTHON")
    }
    return venv
}

/// A tiny random Llama made once per test process with bin/engines/tools/make_tiny_model.py.
actor TinyModel {
    static let shared = TinyModel()
    private var path: String?
    private let dir = TempDir()

    func directory() async throws -> String {
        if let path { return path }
        let out = dir.file("tiny-llama")
        let make = try ChildProcess(executable: try enginePython(),
                                    arguments: ["\(repositoryRoot)/bin/engines/tools/make_tiny_model.py", out],
                                    files: [.open(path: dir.file("make.log"), flags: O_WRONLY | O_CREAT | O_TRUNC, as: 1),
                                            .open(path: dir.file("make.log"), flags: O_WRONLY | O_CREAT | O_APPEND, as: 2)])
        guard try await exitStatus(of: make, timeout: 300)?.isSuccess == true else {
            throw HarnessError("make_tiny_model.py failed: \((try? String(contentsOfFile: dir.file("make.log"), encoding: .utf8)) ?? "")")
        }
        path = out
        return out
    }
}

/// Worker arguments for the example engine through `--engine exec`.
func exampleEngineArguments(_ extra: [String] = []) throws -> [String] {
    ["--engine", "exec", "--engine-arg", "command=\(try enginePython()) \(repositoryRoot)/bin/engines/example_engine.py"] + extra
}

/// The environment that lets a worker find the adapters and their Python.
func engineEnvironment() throws -> [String: String] {
    ["COMPASS_PYTHON": try enginePython(), "COMPASS_ENGINES_DIR": "\(repositoryRoot)/bin/engines"]
}
