// The README's C++ example, verbatim (tests/readme.rs checks that they agree): score a few
// target-site volumes, pick the most informative one, fine-tune on its annotation, evaluate.
// Usage: cpp_quickstart_test BUNDLE_DIR DATA_DIR (DATA_DIR = .cache/data/synthetic-v1)
#include <asfda.hpp>

#include <cstdio>
#include <string>
#include <vector>

int main(int argc, char **argv) try {
    if (argc != 3) return std::fprintf(stderr, "usage: %s BUNDLE_DIR DATA_DIR\n", argv[0]), 2;
    const std::string pool = std::string(argv[2]) + "/pd/pool/", labels = std::string(argv[2]) + "/pd/pool_labels/";

    asfda::EngineOptions options(argv[1]);
    options.tile_overlap = 0.25;  // fewer tiles: a quick look
    asfda::Engine engine(options);

    std::vector<std::string> ids = {"pd_pool_000", "pd_pool_001", "pd_pool_002"};
    std::vector<asfda::Volume> images;
    std::vector<asfda::Score> scores;
    for (const std::string &id : ids) {
        images.push_back(asfda::Volume::load(pool + id + "_image.nii.gz"));
        scores.push_back(engine.score(id, images.back()));
        std::printf("%s  knowledge gap %.3f  ASD %.3f\n", id.c_str(), scores.back().gap_kl(), scores.back().asd());
    }

    asfda::Selection selection = asfda::select(scores, /*budget=*/1);
    const asfda::Pick pick = selection.pick(0);
    std::printf("annotate first: %s (combined score %.2f)\n", pick.id.c_str(), pick.components.combined);

    asfda::FineTuneOptions tuning;
    tuning.patch_size = {32, 32, 32};
    tuning.lr = 1e-3;
    tuning.total_steps = 4;
    asfda::FineTuner tuner(engine, tuning);
    asfda::Volume label = asfda::Volume::load(labels + pick.id + "_label.nii.gz");
    tuner.add_labeled(pick.id, images[pick.components.index], label);
    for (int i = 0; i < 4; i++) std::printf("step %d  loss %.3f\n", i + 1, tuner.step().loss);

    const std::vector<double> dice = tuner.evaluate({&images[pick.components.index]}, {&label});
    std::printf("Dice on the annotated volume: gm %.3f, wm %.3f\n", dice[2], dice[3]);
    tuner.apply_to(engine);  // the engine now segments with the adapted weights
    return 0;
} catch (const asfda::Error &e) {
    std::fprintf(stderr, "asfda error %d: %s\n", static_cast<int>(e.status()), e.what());
    return 1;
}
