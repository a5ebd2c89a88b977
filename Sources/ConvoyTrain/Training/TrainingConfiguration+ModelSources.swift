import ConvoyNN
import ConvoyTensor
import Foundation

/// Where the model's shape, first weights and tokenizer come from besides the shape flags: a Hugging Face
/// GPT-2 directory (`--init-from`) and a tokenizer (`--tokenizer`), and the token cache that tokenises the
/// corpus with it.
extension TrainingConfiguration {
    /// The keys whose values a `--init-from` directory decides, with its `config.json` name for each.
    static let initialModelShapeKeys: [(key: String, flag: String, huggingFace: String)] = [
        ("model.layers", "--layers", "n_layer"), ("model.heads", "--heads", "n_head"), ("model.d_model", "--d-model", "n_embd"),
        ("model.positions", "--positions", "n_positions"), ("model.vocab_size", "--vocab-size", "vocab_size"),
    ]

    /// Takes the model's shape from the `--init-from` directory's `config.json` (and its tokenizer, when the
    /// run names none and the directory has one). A shape setting in `explicitlySet` (given by flag or file)
    /// that disagrees with the directory is refused; `--context` may be shorter than `n_positions` (it defaults
    /// to it).
    mutating func adoptInitialModel(explicitlySet: Set<String>) throws {
        guard let initFrom else { return }
        guard model == "gpt" else {
            throw ConvoyError.invalidConfiguration("--init-from starts a GPT from a Hugging Face GPT-2 directory; it does not apply to --model \(model)")
        }
        guard FileManager.default.fileExists(atPath: initFrom + "/" + GPTCheckpoint.weightsFileName) else {
            throw ConvoyError.io("--init-from \(initFrom) has no \(GPTCheckpoint.weightsFileName); give a Hugging Face GPT-2 directory (model.safetensors + config.json, as save_pretrained writes)")
        }
        let source = try GPTCheckpoint.readConfiguration(from: initFrom)
        guard source.layerNormEpsilon == GPTConfiguration().layerNormEpsilon else {
            throw ConvoyError.incompatible("--init-from \(initFrom): layer_norm_epsilon \(source.layerNormEpsilon) is not supported; Convoy's GPT uses \(GPTConfiguration().layerNormEpsilon)")
        }
        let values = [source.layers, source.heads, source.width, source.contextLength, source.vocabularySize]
        let current = [layers, heads, dModel, positions ?? context, vocabularySize ?? ByteTokenizer.vocabularySize]
        for (index, shape) in Self.initialModelShapeKeys.enumerated() where explicitlySet.contains(shape.key) && current[index] != values[index] {
            throw ConvoyError.invalidConfiguration("\(shape.flag) \(current[index]) conflicts with --init-from \(initFrom), whose config.json has \(shape.huggingFace) \(values[index]); drop \(shape.flag): the model's shape comes from the directory")
        }
        if explicitlySet.contains("model.context") {
            guard context <= source.contextLength else {
                throw ConvoyError.invalidConfiguration("--context \(context) exceeds n_positions \(source.contextLength) of --init-from \(initFrom); use --context \(source.contextLength) or less")
            }
        } else {
            context = source.contextLength
        }
        layers = source.layers
        heads = source.heads
        dModel = source.width
        positions = source.contextLength
        vocabularySize = source.vocabularySize
        if tokenizer == nil && TokenizerFiles.hasTokenizer(in: initFrom) { tokenizer = initFrom }
    }

    /// Sizes the model's vocabulary to the tokenizer's when the run gives no `--vocab-size`.
    mutating func adoptTokenizerVocabulary() throws {
        guard vocabularySize == nil, dataset == "text", let tokenizer, tokenizer != TokenizerLoader.byteTokenizerName else { return }
        vocabularySize = max(ByteTokenizer.vocabularySize, try TokenizerLoader.load(path: tokenizer).vocabularySize)
    }

    /// The checks of these settings against the rest of the configuration.
    func validateModelSources() throws {
        if let positions, context > positions {
            throw ConvoyError.invalidConfiguration("model.context \(context) exceeds model.positions \(positions), the longest context the model takes; use --context \(positions) or less")
        }
        if tokenizer != nil && dataset != "text" {
            throw ConvoyError.invalidConfiguration("--tokenizer tokenises a text corpus; give it with --data FILE (the arithmetic dataset has its own tokens)")
        }
    }

    /// Throws unless every id of `tokenizer` fits the model's vocabulary.
    func checkVocabulary(of tokenizer: any TextTokenizer) throws {
        let vocabulary = modelConfiguration.vocabularySize
        guard tokenizer.vocabularySize <= vocabulary else {
            throw ConvoyError.invalidConfiguration("tokenizer \(self.tokenizer ?? TokenizerLoader.byteTokenizerName) has \(tokenizer.vocabularySize) token ids but the model's vocabulary is \(vocabulary); use --vocab-size \(tokenizer.vocabularySize) or more (or leave it out to take the tokenizer's)")
        }
    }

    /// The tokens of `dataPath` under `tokenizer`, from the token cache (tokenised with a progress bar on
    /// `display` when they are not there yet, or the cached file is damaged).
    func cachedTokens(tokenizer: any TextTokenizer, display: ProgressDisplay?) throws -> MappedTokenFile {
        try checkVocabulary(of: tokenizer)
        let cache = TokenCache(directory: tokenCache)
        let start = DispatchTime.now().uptimeNanoseconds
        func elapsed() -> Double { Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 }
        let label = "tokenising " + URL(fileURLWithPath: dataPath!).lastPathComponent
        let (tokens, origin) = try cache.tokens(corpus: dataPath!, tokenizer: tokenizer, threads: threads ?? ComputePool.defaultThreadCount) { done, total in
            try display?.progress(label, done: done, total: total, elapsed: elapsed())
        }
        switch origin {
        case .cached:
            try display?.message("tokens of \(dataPath!): \(tokens.count) from the cache \(tokens.path)")
        case .tokenised, .rebuilt:
            if case .rebuilt(let reason) = origin {
                try display?.message("the cached tokens \(tokens.path) were damaged (\(reason)); tokenised again")
            }
            let seconds = elapsed()
            try display?.message(String(format: "tokenised %@: %d bytes into %d tokens in %.1f s (%.1f MB/s); cached in %@",
                                        dataPath!, tokens.header.corpusLength, tokens.count, seconds, Double(tokens.header.corpusLength) / max(seconds, 1e-9) / 1e6, tokens.path))
        }
        return tokens
    }
}
