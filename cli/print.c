/* cli/print.c: the tables `evowidth train | eval | layers` print. */
#include <stdlib.h>

#include "cli/cli.h"
#include "svd_adapt/svd_adapt.h"

void dmn_print_eval(FILE *out, const char *title, const struct net_eval *ev)
{
    const size_t K = ev->n_classes;
    fprintf(out, "%s: %zu samples  loss %.4f  accuracy %.2f%%\n", title, ev->n, ev->loss,
            100.0 * ev->accuracy);
    fprintf(out, "  class  precision  recall     f1\n");
    double mp = 0, mr = 0, mf = 0;
    for (size_t k = 0; k < K; k++) {
        fprintf(out, "  %5zu  %9.4f  %6.4f  %6.4f\n", k, ev->precision[k], ev->recall[k],
                ev->f1[k]);
        mp += ev->precision[k];
        mr += ev->recall[k];
        mf += ev->f1[k];
    }
    fprintf(out, "   mean  %9.4f  %6.4f  %6.4f\n", mp / (double)K, mr / (double)K, mf / (double)K);
    fprintf(out, "  confusion (rows: true class, columns: predicted)\n       ");
    for (size_t k = 0; k < K; k++) fprintf(out, "%6zu", k);
    fputc('\n', out);
    for (size_t i = 0; i < K; i++) {
        fprintf(out, "  %5zu", i);
        for (size_t j = 0; j < K; j++) fprintf(out, "%6zu", ev->confusion[i * K + j]);
        fputc('\n', out);
    }
}

void dmn_print_layers(FILE *out, const struct net *n)
{
    fprintf(out, "  %-12s %-8s %7s %6s %10s %12s\n", "layer", "kind", "width", "rank", "params",
            "MACs/sample");
    for (size_t i = 0; i < n->n_layers; i++) {
        const struct net_layer *l = &n->layers[i];
        struct net_layer_info li;
        net_layer_info(n, i, &li);
        fprintf(out, "  %-12s %-8s %7zu %6zu %10zu %12zu\n", l->spec.name,
                net_kind_name(l->spec.kind), li.width, l->spec.rank, li.params, li.macs);
    }
    fprintf(out, "  total parameters %zu, MACs/sample %zu\n", n->n_params, net_macs(n));
}

void dmn_print_spectra(FILE *out, const struct net *n)
{
    float *s = malloc(4096 * sizeof(float));
    if (!s) return;
    fprintf(out, "  top singular values of each dense / conv weight:\n");
    for (size_t i = 0; i < n->n_layers; i++) {
        enum net_kind k = n->layers[i].spec.kind;
        if (k != NET_DENSE && k != NET_CONV) continue;
        long r = svd_layer_spectrum(n, i, s, 4096);
        fprintf(out, "  %-12s", n->layers[i].spec.name);
        if (r < 0) fprintf(out, " (SVD failed)");
        for (long j = 0; j < r && j < 8; j++) fprintf(out, " %8.4f", s[j]);
        if (r > 8) fprintf(out, " ... %8.4f (%ld values)", s[r - 1], r);
        fputc('\n', out);
    }
    free(s);
}
