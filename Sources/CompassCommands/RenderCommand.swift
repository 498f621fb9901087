import ArgumentParser

struct RenderCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "render",
        abstract: "Write job specs (Slurm, Kubernetes) for a topology's workers (not built yet).")

    func run() throws {
        throw fail("compass render", "render is not built yet")
    }
}
