/* cli/main_evowidth.c: the `evowidth` command: foreground training and tools on saved
 * models, and (later in this file's table) the client of a running evowidthd. One table of
 * subcommands; each returns the process exit code. */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/onnx.h"
#include "daemon/dist.h"

struct ew_cmd {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *help;
};

static const struct ew_cmd EW_CMDS[] = {
    {"train", dmn_cmd_train, "train CONFIG in the foreground (no daemon)"},
    {"eval", dmn_cmd_eval, "evaluate a saved model on its test set"},
    {"layers", dmn_cmd_layers_any,
     "widths, parameters, MACs and spectra of a saved MODEL (or, without one, of the daemon)"},
    // Compression tools on saved models (cli/compress.c).
    {"compress", dmn_cmd_compress, "factorize dense / conv layers by SVD (--rank R | auto)"},
    {"sweep", dmn_cmd_sweep, "accuracy, MACs and size of one layer at each rank (CaffeSVD)"},
    {"thin", dmn_cmd_thin, "a thin network from a wide one (SOMP-style selection)"},
    {"export", cli_cmd_export, "a compressed model file, or --format onnx | safetensors"},
    {"predict", cli_cmd_predict, "classes and probabilities of IDX / CIFAR images (cli/)"},
    // Clients of a running evowidthd (cli/client.c); --url, --token-file, --json.
    {"status", dmn_cmd_client, "the daemon's progress, speed, widths and policy"},
    {"history", dmn_cmd_client, "the daemon's metric history (--points N)"},
    {"policy", dmn_cmd_client, "policy [get | set KEY=VALUE ...]: the width policy"},
    {"pause", dmn_cmd_client, "pause the daemon's training"},
    {"resume", dmn_cmd_client, "resume the daemon's training"},
    {"adapt", dmn_cmd_client, "run a width adaptation now"},
    {"checkpoint", dmn_cmd_client, "write a checkpoint now and print its path"},
    {"stop", dmn_cmd_client, "checkpoint and stop the daemon (waits for it to exit)"},
};

static void ew_usage(FILE *f)
{
    fprintf(f, "usage: evowidth COMMAND [ARGS]   (evowidth COMMAND --help for its options;\n"
               "       evowidth --version; every config knob: evowidthd --help-config)\n");
    for (size_t i = 0; i < sizeof(EW_CMDS) / sizeof(EW_CMDS[0]); i++)
        fprintf(f, "  %-10s %s\n", EW_CMDS[i].name, EW_CMDS[i].help);
}


int main(int argc, char **argv)
{
    dmn_omp_passive(argv);
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        ew_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0) {
        printf("evowidth %s\n", EW_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof(EW_CMDS) / sizeof(EW_CMDS[0]); i++) {
        if (strcmp(argv[1], EW_CMDS[i].name) != 0) continue;
        // Under mpirun every rank runs the command (train shares the run, daemon/dist.h).
        if (dmn_dist_init(&argc, &argv) < 0) {
            fprintf(stderr, "evowidth: MPI_Init failed\n");
            return 1;
        }
        int code = EW_CMDS[i].fn(argc - 1, argv + 1);
        dmn_dist_finalize(code);
        return code;
    }
    fprintf(stderr, "evowidth: unknown command \"%s\"\n", argv[1]);
    ew_usage(stderr);
    return 2;
}
