import ConvoyTensor
import Foundation

/// Checks between keys that need more than the configuration itself: the dataset a resumed checkpoint was
/// trained on. (The micro-batch size against dp is a rule of the parallel plan, checked when the world is known.)
extension TrainingConfiguration {
    /// The error for an explicit `--dataset arithmetic` beside a data path, which would otherwise train on
    /// one of them silently.
    static func contradictoryDataset(_ path: String) -> ConvoyError {
        .invalidConfiguration("data.dataset is \"arithmetic\" but data.path \(path) is set; drop --data (data.path) to train on arithmetic, or use --dataset text")
    }

    /// What the model is trained on, in words; two runs with the same description see the same examples.
    var datasetDescription: String {
        switch dataset {
        case "text":
            let path = dataPath.map { URL(fileURLWithPath: $0).standardizedFileURL.resolvingSymlinksInPath().path } ?? "?"
            // The byte tokenizer gives the same ids whether read into memory or through the token cache.
            let tokens = tokenizer.flatMap { $0 == TokenizerLoader.byteTokenizerName ? nil : ", tokenizer \($0)" } ?? ""
            return "text file \(path) (validation fraction \(validationFraction)\(tokens))"
        default:
            return "arithmetic with \(digits) digits and \(heldOut) held-out problems"
        }
    }

    /// Throws unless this run trains on the same data as `saved`, the configuration of the checkpoint at
    /// `checkpoint` it resumes.
    public func checkSameDataset(as saved: TrainingConfiguration, checkpoint: String) throws {
        guard saved.datasetDescription != datasetDescription else { return }
        throw ConvoyError.incompatible("checkpoint \(checkpoint) was trained on \(saved.datasetDescription); this run uses \(datasetDescription). Resume with the same --dataset, --data, --tokenizer, --digits and --held-out")
    }
}
