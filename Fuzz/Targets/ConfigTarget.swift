import ConciergeConfig

/// The configuration loader: YAML (Yams) behind the nesting guard, then decoding and validation.
enum ConfigTarget {
    /// `ConfigurationLoader.parseConfiguration` on the input as a YAML file (no secret is read).
    /// It must return or throw, never crash (a deep nesting that would overflow the YAML
    /// parser's stack is refused by NestingGuard first) or hang; the error's text is rendered.
    static let config: FuzzTargets.Target = { data in
        let yaml = String(decoding: data, as: UTF8.self)
        do {
            let configuration = try ConfigurationLoader.parseConfiguration(yaml: yaml, baseDirectory: "/nonexistent-concierge-fuzz")
            _ = "\(configuration)"
        } catch {
            _ = String(describing: error)
        }
    }
}
