import Foundation

/// The time in whole seconds since 1970, as OpenAI's objects carry it (`created`, `created_at`).
func now() -> Int { Int(Date().timeIntervalSince1970) }
