// The deployment contract written by export/converter.py (mobile_app/contract.json).
// The Python runtime reads the same file, so both sides agree on names, sizes and ranges.
import Foundation

struct PBRContract: Codable {
    let imageSize: Int
    let outputSize: Int
    let srScale: Int
    let family: String
    let modelName: String
    let finalSize: Int
    let inputNames: [String]
    let inputFormat: String
    let mean: [Double]
    let std: [Double]
    let outputNames: [String]
    let outputChannels: [String: Int]
    let outputRanges: [String: [Double]]
    let normalConvention: String
    let version: Int

    enum CodingKeys: String, CodingKey {
        case imageSize = "image_size", outputSize = "output_size", srScale = "sr_scale", family
        case modelName = "model_name", finalSize = "final_size", inputNames = "input_names"
        case inputFormat = "input_format", mean, std, outputNames = "output_names"
        case outputChannels = "output_channels", outputRanges = "output_ranges"
        case normalConvention = "normal_convention", version
    }

    static func load(from url: URL) throws -> PBRContract {
        let contract = try JSONDecoder().decode(PBRContract.self, from: Data(contentsOf: url))
        guard contract.version == 1, contract.inputNames.count == 3 else {
            throw PBRError.badContract("unsupported contract version \(contract.version) or view count")
        }
        return contract
    }
}

enum PBRError: Error {
    case badContract(String)
    case badInput(String)
    case badOutput(String)
}
