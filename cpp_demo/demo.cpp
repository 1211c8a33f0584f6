// asfda_demo: the whole adaptation loop through the C++ wrapper, on folders of NIfTI volumes.
//
//   1. score every volume of the unlabeled pool (progress on stderr);
//   2. select the budget (ASFDA by default) and the reliable set;
//   3. fine-tune: the picks with their oracle labels (the "annotation"), the reliable volumes as
//      pseudo-labelled ones;
//   4. evaluate the unadapted and the fine-tuned weights on the held-out test volumes and print
//      Dice per class before/after, and the selection with its score components.
//
// Folders: --pool holds <id>_image.nii.gz (or .nii); --pool-labels holds <id>_label.nii.gz for
// each; --test holds <id>_image.nii.gz with <id>_label.nii.gz beside it.
// Exit status: 0 on success; 1 with --expect-improvement when the mean foreground Dice did not
// improve; 2 on bad arguments or any error.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "asfda.hpp"

namespace fs = std::filesystem;

namespace {

const char *const USAGE =
    "usage: asfda_demo --bundle DIR --pool DIR --pool-labels DIR --test DIR [--budget 2] [--steps 20]\n"
    "                  [--patch 32] [--batch 2] [--lr 1e-3] [--method asfda] [--seed 0] [--threads 0]\n"
    "                  [--max-pool N] [--max-test N] [--max-reliable N] [--labeled-fraction F]\n"
    "                  [--export DIR] [--expect-improvement]\n"
    "  --max-reliable N: pseudo-label at most N of the reliable volumes (default all; 0 = none)\n"
    "  --labeled-fraction F: share of patches from annotated volumes (default the library's, 0.8)\n";

struct Args {
    std::string bundle, pool, pool_labels, test, method = "asfda", export_dir;
    std::size_t budget = 2, patch = 32, batch = 2, max_pool = 0, max_test = 0;
    std::optional<std::size_t> max_reliable;
    std::optional<double> labeled_fraction;
    std::uint64_t steps = 20, seed = 0;
    std::uint32_t threads = 0;
    double lr = 1e-3;
    bool expect_improvement = false;
};

[[noreturn]] void usage_error(const std::string &message) {
    std::fprintf(stderr, "asfda_demo: %s\n%s", message.c_str(), USAGE);
    std::exit(2);
}

std::uint64_t parse_uint(const std::string &flag, const std::string &text) {
    try {
        std::size_t used = 0;
        const unsigned long long v = std::stoull(text, &used);
        if (used == text.size() && text[0] != '-') return v;
    } catch (const std::exception &) {
    }
    usage_error(flag + " needs a non-negative integer, got '" + text + "'");
}

double parse_double(const std::string &flag, const std::string &text) {
    try {
        std::size_t used = 0;
        const double v = std::stod(text, &used);
        if (used == text.size()) return v;
    } catch (const std::exception &) {
    }
    usage_error(flag + " needs a number, got '" + text + "'");
}

Args parse(int argc, char **argv) {
    Args a;
    for (int i = 1; i < argc; i++) {
        const std::string flag = argv[i];
        if (flag == "--expect-improvement") {
            a.expect_improvement = true;
            continue;
        }
        if (flag == "--help" || flag == "-h") {
            std::fputs(USAGE, stdout);
            std::exit(0);
        }
        if (i + 1 >= argc) usage_error(flag + " needs a value");
        const std::string value = argv[++i];
        if (flag == "--bundle") a.bundle = value;
        else if (flag == "--pool") a.pool = value;
        else if (flag == "--pool-labels") a.pool_labels = value;
        else if (flag == "--test") a.test = value;
        else if (flag == "--method") a.method = value;
        else if (flag == "--export") a.export_dir = value;
        else if (flag == "--budget") a.budget = parse_uint(flag, value);
        else if (flag == "--steps") a.steps = parse_uint(flag, value);
        else if (flag == "--patch") a.patch = parse_uint(flag, value);
        else if (flag == "--batch") a.batch = parse_uint(flag, value);
        else if (flag == "--seed") a.seed = parse_uint(flag, value);
        else if (flag == "--threads") a.threads = static_cast<std::uint32_t>(parse_uint(flag, value));
        else if (flag == "--max-pool") a.max_pool = parse_uint(flag, value);
        else if (flag == "--max-test") a.max_test = parse_uint(flag, value);
        else if (flag == "--max-reliable") a.max_reliable = parse_uint(flag, value);
        else if (flag == "--lr") a.lr = parse_double(flag, value);
        else if (flag == "--labeled-fraction") a.labeled_fraction = parse_double(flag, value);
        else usage_error("unknown option " + flag);
    }
    if (a.bundle.empty() || a.pool.empty() || a.pool_labels.empty() || a.test.empty())
        usage_error("--bundle, --pool, --pool-labels and --test are required");
    if (a.steps == 0) usage_error("--steps must be at least 1");
    // A missing folder is the usual first-run problem: say how the demo data is made.
    for (const std::string *dir : {&a.bundle, &a.pool, &a.pool_labels, &a.test}) {
        if (!fs::is_directory(*dir)) {
            std::fprintf(stderr,
                         "asfda_demo: folder '%s' does not exist. The synthetic demo data is made by `make data` "
                         "in the asfda source tree (into .cache/data/synthetic-v1).\n",
                         dir->c_str());
            std::exit(2);
        }
    }
    return a;
}

// The ids of the `<id>_image.nii[.gz]` files in `dir`, sorted (so runs are reproducible).
std::vector<std::pair<std::string, std::string>> list_images(const std::string &dir, std::size_t max) {
    std::vector<std::pair<std::string, std::string>> out;  // id, path
    for (const fs::directory_entry &e : fs::directory_iterator(dir)) {
        const std::string name = e.path().filename().string();
        for (const char *suffix : {"_image.nii.gz", "_image.nii"}) {
            const std::string s = suffix;
            if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0) {
                out.emplace_back(name.substr(0, name.size() - s.size()), e.path().string());
                break;
            }
        }
    }
    std::sort(out.begin(), out.end());
    if (max > 0 && out.size() > max) out.resize(max);
    if (out.empty()) throw std::runtime_error("no <id>_image.nii.gz files in " + dir);
    return out;
}

// `<dir>/<id>_label.nii.gz`, or .nii; the error names both.
std::string label_path(const std::string &dir, const std::string &id) {
    for (const char *ext : {".nii.gz", ".nii"}) {
        const fs::path p = fs::path(dir) / (id + "_label" + ext);
        if (fs::exists(p)) return p.string();
    }
    throw std::runtime_error("no label for '" + id + "' in " + dir + " (expected " + id + "_label.nii.gz)");
}

double mean_foreground(const std::vector<double> &dice) {
    double sum = 0;
    for (std::size_t c = 1; c < dice.size(); c++) sum += dice[c];
    return dice.size() > 1 ? sum / static_cast<double>(dice.size() - 1) : 0.0;
}

int run(const Args &a) {
    asfda::EngineOptions eo(a.bundle);
    eo.runtime.threads = a.threads;
    asfda::Engine engine(eo);

    // 1. Score the pool.
    const auto pool = list_images(a.pool, a.max_pool);
    std::vector<asfda::Score> scores;
    for (std::size_t i = 0; i < pool.size(); i++) {
        const auto &[id, path] = pool[i];
        const asfda::Volume image = asfda::Volume::load(path);
        int last = -1;
        scores.push_back(engine.score(id, image, nullptr, [&](double f) {
            const int pct = static_cast<int>(100 * f);
            if (pct / 10 != last / 10) std::fprintf(stderr, "\rscoring %zu/%zu %s %3d%%", i + 1, pool.size(), id.c_str(), pct);
            last = pct;
            return true;
        }));
        std::fprintf(stderr, "\rscoring %zu/%zu %s done  \n", i + 1, pool.size(), id.c_str());
    }

    // 2. Select.
    asfda::SelectOptions so(a.budget);
    so.method = asfda::select_method_from_name(a.method);
    so.seed = a.seed;
    const asfda::Selection selection = asfda::select(scores, so);
    const std::vector<asfda::Pick> picks = selection.picks();
    std::vector<std::string> reliable = selection.reliable_ids();
    if (a.max_reliable && reliable.size() > *a.max_reliable) reliable.resize(*a.max_reliable);

    // 3. Fine-tune: picks with oracle labels, reliable volumes pseudo-labelled.
    asfda::FineTuneOptions fo;
    fo.patch_size = {a.patch, a.patch, a.patch};
    fo.batch_size = a.batch;
    fo.total_steps = a.steps;
    fo.lr = a.lr;
    fo.seed = a.seed;
    if (a.labeled_fraction) fo.labeled_fraction = *a.labeled_fraction;
    asfda::FineTuner tuner(engine, fo);
    for (const asfda::Pick &p : picks) {
        const asfda::Volume image = asfda::Volume::load(pool[p.components.index].second);
        const asfda::Volume label = asfda::Volume::load(label_path(a.pool_labels, p.id));
        tuner.add_labeled(p.id, image, label);
        std::fprintf(stderr, "annotated: %s\n", p.id.c_str());
    }
    for (const std::string &id : reliable) {
        const auto it = std::find_if(pool.begin(), pool.end(), [&](const auto &e) { return e.first == id; });
        const double kept = tuner.add_unlabeled(id, asfda::Volume::load(it->second));
        std::fprintf(stderr, "pseudo-labelled: %s (%.0f%% of voxels kept)\n", id.c_str(), 100 * kept);
    }

    // 4. Held-out test volumes: before, train, after.
    const auto tests = list_images(a.test, a.max_test);
    std::vector<asfda::Volume> test_images, test_labels;
    for (const auto &[id, path] : tests) {
        test_images.push_back(asfda::Volume::load(path));
        test_labels.push_back(asfda::Volume::load(label_path(a.test, id)));
    }
    if (!reliable.empty()) {
        // The library makes this check at the first step and uses the pseudo-labels only if it
        // passes; shown here so the log says why pseudo_in_batch stays 0 on a badly shifted site.
        const asfda::PseudoLabelCheck check = tuner.check_pseudo_labels();
        std::fprintf(stderr, "pseudo-labels: the unadapted model's Dice on the annotated volumes is %.3f (need %.2f): %s\n",
                     check.foreground_dice, fo.pseudo_label_min_dice, check.trusted ? "used" : "not used");
    }
    std::fprintf(stderr, "evaluating the unadapted model on %zu test volumes\n", tests.size());
    const std::vector<double> before = tuner.evaluate(test_images, test_labels);
    asfda::StepReport first{}, last{};
    for (std::uint64_t s = 0; s < a.steps; s++) {
        last = tuner.step();
        if (s == 0) first = last;
        std::fprintf(stderr, "step %3llu/%llu loss %.4f (ce %.4f dice %.4f) lr %.2e lambda %.2f batch %zu+%zu\n",
                     static_cast<unsigned long long>(last.step), static_cast<unsigned long long>(a.steps), last.loss,
                     last.loss_ce, last.loss_dice, last.lr, last.lambda, last.labeled_in_batch, last.pseudo_in_batch);
    }
    std::fprintf(stderr, "evaluating the fine-tuned model\n");
    const std::vector<double> after = tuner.evaluate(test_images, test_labels);
    if (!a.export_dir.empty()) tuner.export_bundle(a.export_dir);

    // Report.
    std::printf("asfda_demo: pool %zu volumes, budget %zu (%s), %zu reliable, %llu steps at patch %zu, lr %g\n",
                pool.size(), a.budget, a.method.c_str(), reliable.size(), static_cast<unsigned long long>(a.steps),
                a.patch, a.lr);
    std::printf("\nselection (order, id, gap, gap_rank, diversity, dkd_rank, asd, asd_rank, combined):\n");
    for (const asfda::Pick &p : picks) {
        const AsfdaPick &c = p.components;
        std::printf("  %zu  %-16s gap %.4g  gap_rank %.3f  diversity %.3f  dkd_rank %.3f  asd %.4f  asd_rank %.3f  "
                    "combined %.3f\n",
                    c.order, p.id.c_str(), c.gap, c.gap_rank, c.diversity, c.dkd_rank, c.asd, c.asd_rank, c.combined);
    }
    std::printf("reliable (pseudo-labelled):");
    for (const std::string &id : reliable) std::printf(" %s", id.c_str());
    std::printf("\n\nfine-tuning loss: step 1 %.4f -> step %llu %.4f\n", first.loss,
                static_cast<unsigned long long>(last.step), last.loss);
    std::printf("\nDice on %zu held-out test volumes:\n  %-22s %8s %8s %8s\n", tests.size(), "class", "before",
                "after", "change");
    for (std::size_t c = 0; c < before.size(); c++) {
        const std::string name = c == 0 ? "0 (background)" : std::to_string(c);
        std::printf("  %-22s %8.4f %8.4f %+8.4f\n", name.c_str(), before[c], after[c], after[c] - before[c]);
    }
    const double mb = mean_foreground(before), ma = mean_foreground(after);
    std::printf("  %-22s %8.4f %8.4f %+8.4f\n", "mean foreground", mb, ma, ma - mb);
    if (a.expect_improvement && !(ma > mb)) {
        std::printf("FAILED: --expect-improvement: mean foreground Dice %.4f after is not above %.4f before\n", ma,
                    mb);
        return 1;
    }
    return 0;
}

}  // namespace

int main(int argc, char **argv) {
    const Args args = parse(argc, argv);
    try {
        return run(args);
    } catch (const asfda::Error &e) {
        std::fprintf(stderr, "\nasfda_demo: %s: %s\n", e.status_name(), e.what());
    } catch (const std::exception &e) {
        std::fprintf(stderr, "\nasfda_demo: %s\n", e.what());
    }
    return 2;
}
