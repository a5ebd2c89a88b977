import ConvoyNN
import ConvoyParallel
import ConvoyTensor

/// What `--model ctr` reads of the configuration.
extension TrainingConfiguration {
    /// Rows of each of the 26 tables.
    public var ctrVocabularySizes: [Int] {
        ctrVocabulary.count == 1 ? Array(repeating: ctrVocabulary[0], count: CTRFields.categorical) : ctrVocabulary
    }

    /// The CTR model's shape.
    public var ctrConfiguration: CTRConfiguration {
        CTRConfiguration(vocabularySizes: ctrVocabularySizes, embeddingWidth: ctrEmbeddingWidth, denseFeatures: CTRFields.dense, hiddenWidth: ctrHidden)
    }

    /// `--staleness`, parsed.
    public func parsedStaleness() throws -> Staleness { try Staleness(parsing: staleness) }

    /// The row-wise rule the tables (and dense parameters) are updated with.
    public func rowOptimizer() throws -> RowOptimizer {
        guard let kind = RowOptimizer.Kind(rawValue: optimizer) else {
            throw ConvoyError.invalidConfiguration("--model ctr trains with --optimizer sgd, adagrad, adam or adamw (row-wise lazy state); \(optimizer) is not one of them")
        }
        return RowOptimizer(kind: kind, beta1: Float(beta1), beta2: Float(beta2), weightDecay: kind == .adamw ? Float(weightDecay) : 0)
    }

    /// The click data: a Criteo TSV file (`--data`) or generated data.
    public func makeClickDataset() throws -> any ClickDataset {
        if let dataPath { return try CriteoDataset(path: dataPath, vocabularySizes: ctrVocabularySizes) }
        return try SyntheticClickDataset(seed: seed, vocabularySizes: ctrVocabularySizes, denseFeatures: CTRFields.dense,
                                         zipfExponent: ctrZipf, validationCount: ctrValidation)
    }

    /// The relations of `--model ctr`'s keys (the world size is checked when the ranks start).
    func validateClickThrough() throws {
        try ctrConfiguration.validate()
        _ = try rowOptimizer()
        _ = try parsedStaleness()
        guard minLearningRate <= learningRate else {
            throw ConvoyError.invalidConfiguration("training.min_lr \(minLearningRate) exceeds training.lr \(learningRate)")
        }
        let servers = try serverCount
        if (comm == "ps" || placements.contains { $0.comm == "ps" }) && servers == 0 {
            throw ConvoyError.invalidConfiguration("--comm ps (or a [[placement]] with comm = \"ps\") puts dense parameters on the parameter servers, but there are none; add --ps-servers S or use --comm allreduce")
        }
        if comm == "allreduce" && servers > 0 {
            throw ConvoyError.invalidConfiguration("--comm allreduce all-reduces every table among the workers, so --ps-servers \(psServers) would hold nothing; use --comm hybrid (tables on the servers, dense all-reduced) or --comm ps, or drop --ps-servers")
        }
        if servers == 0 && staleness != "0" {
            throw ConvoyError.invalidConfiguration("--staleness \(staleness) bounds how far workers run ahead of parameter servers; it needs --ps-servers S ≥ 1 (all-reduce is always synchronous)")
        }
        if tp != 1 || pipeline.stages != 1 || zeroStage != 0 {
            throw ConvoyError.invalidConfiguration("--model ctr runs data-parallel workers with parameter servers; --tp, --pp and --zero-stage are GPT strategies (leave them at their defaults)")
        }
        if let section = placements.first(where: { $0.role == nil && $0.comm == nil }) {
            throw ConvoyError.invalidConfiguration("[[placement]] modules = \"\(section.modules)\" devices = \"\(section.devices)\" places GPT stages; --model ctr takes sections with role = \"server\" (server devices) or comm = \"ps\"|\"allreduce\" (per-module dense synchronisation)")
        }
        if accumulateSteps != 1 {
            throw ConvoyError.invalidConfiguration("--model ctr takes one batch per step; leave --accumulate-steps at 1")
        }
    }

    /// The parameter-server roles of `--model ctr` in a world of `worldSize` ranks (nil: no servers), after
    /// checking what only the world size decides: S < world, `--dp` = world − S, the batch divisible by the
    /// workers. `convoy train` (every rank, when it starts) and `convoy plan` check with this one function.
    public func clickThroughRoles(worldSize: Int) throws -> ParameterServerRoles? {
        let servers = try serverCount, placed = try placedServerRanks()
        let roles = servers > 0 ? try ParameterServerRoles(worldSize: worldSize, servers: placed == nil ? servers : nil, serverRanks: placed) : nil
        let workers = worldSize - servers
        if let dp, dp != workers {
            throw ConvoyError.invalidConfiguration("--dp \(dp) workers, but the world of \(worldSize) ranks less \(servers) servers leaves \(workers); under mpirun use \(dp + servers) processes")
        }
        guard batch % workers == 0 else {
            throw ConvoyError.invalidConfiguration("training.batch \(batch) is not divisible by the \(workers) workers; use a multiple of \(workers)")
        }
        return roles
    }

    /// The ranks a Local run of `--model ctr` starts: `--dp` workers (default 1) and the servers.
    public var clickThroughLocalWorldSize: Int {
        get throws { (dp ?? 1) + (try serverCount) }
    }

    /// The server ranks `[[placement]] role = "server"` names (nil: none; then the last `--ps-servers` ranks).
    public func placedServerRanks() throws -> [Int]? {
        let sections = placements.filter { $0.role == "server" }
        guard !sections.isEmpty else { return nil }
        return try sections.flatMap { try $0.serverRanks() }
    }

    /// Parameter servers: `--ps-servers`, or the devices of `role = "server"` placements.
    public var serverCount: Int {
        get throws {
            guard let placed = try placedServerRanks() else { return psServers }
            if psServers != 0 && psServers != placed.count {
                throw ConvoyError.invalidConfiguration("[[placement]] role = \"server\" names \(placed.count) servers but --ps-servers is \(psServers); drop one or make them agree")
            }
            return placed.count
        }
    }

    /// How the dense parameter `name` (`mlp.0.weight`) is synchronised: the last `[[placement]]` with `comm`
    /// whose pattern matches its module (`mlp.0`) decides, else `--comm` ("ps" on the servers, otherwise "allreduce").
    public func denseSynchronisation(of name: String) -> String {
        let module = name.split(separator: ".").dropLast().joined(separator: ".")
        if let section = placements.last(where: { $0.comm != nil && $0.matches(module) }) { return section.comm! }
        return comm == "ps" ? "ps" : "allreduce"
    }
}
