/* daemon/main_evowidthd.c: the evowidthd process: options, then dmn_server_run. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "daemon/daemon.h"
#include "daemon/dist.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: evowidthd --config FILE [--listen ADDR:PORT] [--state-dir DIR]\n"
               "                 [--token-file F] [--quiet] [--resume-anyway | --fresh]\n"
               "                 [--version]\n"
               "Trains in the background, checkpoints into the state dir (resuming from the\n"
               "newest valid checkpoint there) and serves the HTTP/JSON API on loopback.\n"
               "A state dir whose run has a different config is refused: --resume-anyway\n"
               "continues the stored run as it was, --fresh moves it to STATE_DIR/archive-*\n"
               "and starts a new one.\n"
               "Every config knob with its default and range: evowidthd --help-config.\n"
               "The dashboard: http://ADDR:PORT/ (live charts, events, policy).\n");
}


int main(int argc, char **argv)
{
    dmn_omp_passive(argv);
    static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                         {"listen", required_argument, 0, 'l'},
                                         {"state-dir", required_argument, 0, 's'},
                                         {"token-file", required_argument, 0, 't'},
                                         {"quiet", no_argument, 0, 'q'},
                                         {"help", no_argument, 0, 'h'},
                                         {"help-config", no_argument, 0, 'H'},
                                         {"version", no_argument, 0, 'V'},
                                         {"resume-anyway", no_argument, 0, 'R'},
                                         {"fresh", no_argument, 0, 'F'},
                                         {0, 0, 0, 0}};
    struct dmn_server_opts o = {0};
    int c;
    while ((c = getopt_long(argc, argv, "c:l:s:t:qh", opts, NULL)) != -1) {
        switch (c) {
        case 'c': o.config_path = optarg; break;
        case 'l': o.listen = optarg; break;
        case 's': o.state_dir = optarg; break;
        case 't': o.token_file = optarg; break;
        case 'q': o.quiet = 1; break;
        case 'R': o.resume_anyway = 1; break;
        case 'F': o.fresh = 1; break;
        case 'h': usage(stdout); return 0;
        case 'H': cfg_help(stdout); return 0;
        case 'V': printf("evowidthd %s\n", EW_VERSION); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!o.config_path || optind != argc || (o.resume_anyway && o.fresh)) {
        usage(stderr);
        return 2;
    }
    // Under mpirun: rank 0 serves, the other ranks train beside it (daemon/dist.h).
    if (dmn_dist_init(&argc, &argv) < 0) {
        fprintf(stderr, "evowidthd: MPI_Init failed\n");
        return 1;
    }
    int code = dmn_server_run(&o);
    dmn_dist_finalize(code);
    return code;
}
