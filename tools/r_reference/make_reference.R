# Reference values for the TMBRB statistics toolkit (TMBRBLib.stats), computed with R.
#
# Needs: R (Debian r-base-core), r-cran-proc, r-cran-survival, r-cran-maxstat, r-cran-jsonlite.
#   apt-get install -y r-base-core r-cran-survival r-cran-proc r-cran-maxstat
# Run from the repository root:
#   Rscript tools/r_reference/make_reference.R tests/stats/fixtures
# Writes the dataset rows used (CSV) and reference.json into the given folder. The Python tests
# (tests/stats/test_r_agreement.py) read both, so CI does not need R.
#
# Datasets ship with the packages: pROC::aSAH, survival::lung / veteran / ovarian, maxstat::DLBCL.

suppressPackageStartupMessages({
  library(pROC)
  library(survival)
  library(maxstat)
  library(jsonlite)
})

args <- commandArgs(trailingOnly = TRUE)
outdir <- if (length(args) >= 1) args[1] else "tests/stats/fixtures"
dir.create(outdir, showWarnings = FALSE, recursive = TRUE)

wcsv <- function(df, name) write.csv(df, file.path(outdir, name), row.names = FALSE, na = "")
ref <- list()
ref$versions <- list(R = R.version.string, pROC = as.character(packageVersion("pROC")),
                     survival = as.character(packageVersion("survival")),
                     maxstat = as.character(packageVersion("maxstat")))

# ---------------------------------------------------------------- ROC (pROC::aSAH)
data(aSAH)
asah <- data.frame(outcome = as.character(aSAH$outcome), gender = as.character(aSAH$gender),
                   age = aSAH$age, wfns = as.numeric(aSAH$wfns), s100b = aSAH$s100b, ndka = aSAH$ndka)
wcsv(asah, "asah.csv")

roc_ref <- function(r, thresholds) {
  ci <- ci.auc(r, method = "delong")
  best <- coords(r, "best", best.method = "youden", ret = c("threshold", "sensitivity", "specificity"),
                 transpose = FALSE)
  at <- coords(r, thresholds, input = "threshold", ret = c("threshold", "sensitivity", "specificity"),
               transpose = FALSE)
  allc <- coords(r, "all", ret = c("threshold", "sensitivity", "specificity"), transpose = FALSE)
  list(auc = as.numeric(auc(r)), ci_low = ci[1], ci_high = ci[3], variance = var(r, method = "delong"),
       direction = r$direction, n_cases = length(r$cases), n_controls = length(r$controls),
       best = best, at = at, curve = allc)
}
ref$roc <- list(
  s100b = roc_ref(roc(asah$outcome, asah$s100b, levels = c("Good", "Poor"), quiet = TRUE), c(0.205, 0.13, 0.5)),
  ndka = roc_ref(roc(asah$outcome, asah$ndka, levels = c("Good", "Poor"), quiet = TRUE), c(10, 11.74)),
  wfns = roc_ref(roc(asah$outcome, asah$wfns, levels = c("Good", "Poor"), quiet = TRUE), c(2, 3, 4.5)),
  neg_s100b = roc_ref(roc(asah$outcome, -asah$s100b, levels = c("Good", "Poor"), quiet = TRUE), c(-0.205, -0.13)),
  age = roc_ref(roc(asah$outcome, asah$age, levels = c("Good", "Poor"), quiet = TRUE), c(50))
)
rt <- function(a, b) {
  t <- roc.test(roc(asah$outcome, asah[[a]], levels = c("Good", "Poor"), quiet = TRUE),
                roc(asah$outcome, asah[[b]], levels = c("Good", "Poor"), quiet = TRUE),
                method = "delong", paired = TRUE)
  list(score1 = a, score2 = b, z = unname(t$statistic), p = t$p.value, auc1 = unname(t$estimate[1]),
       auc2 = unname(t$estimate[2]))
}
ref$roc_test <- list(rt("s100b", "ndka"), rt("s100b", "wfns"), rt("wfns", "ndka"))

# Spearman (t approximation, as scipy) and logistic regression
ct <- cor.test(asah$s100b, asah$ndka, method = "spearman", exact = FALSE)
ref$spearman <- list(rho = unname(ct$estimate), p = ct$p.value)
asah$y <- as.integer(asah$outcome == "Poor")
g <- glm(y ~ s100b + wfns, data = asah, family = binomial, control = glm.control(epsilon = 1e-14, maxit = 100))
sg <- summary(g)$coefficients
ref$logistic <- list(terms = rownames(sg), coef = unname(sg[, 1]), se = unname(sg[, 2]), z = unname(sg[, 3]),
                     p = unname(sg[, 4]), auc = as.numeric(auc(roc(asah$y, fitted(g), quiet = TRUE))),
                     loglik = as.numeric(logLik(g)))

# ---------------------------------------------------------------- Survival (survival::lung)
lungd <- data.frame(time = lung$time, status = lung$status - 1, age = lung$age, sex = lung$sex,
                    ph_ecog = lung$ph.ecog, ph_karno = lung$ph.karno, wt_loss = lung$wt.loss)
wcsv(lungd, "lung.csv")

km_ref <- function(formula, data, conf.type) {
  f <- survfit(formula, data = data, conf.type = conf.type)
  tab <- summary(f)$table
  if (is.null(dim(tab))) tab <- t(as.matrix(tab))
  q <- quantile(f, probs = 0.5)
  out <- list(strata = if (is.null(f$strata)) "all" else names(f$strata),
              n = unname(tab[, "records"]), events = unname(tab[, "events"]),
              median = unname(tab[, "median"]), lcl = unname(tab[, 8]), ucl = unname(tab[, 9]),
              q_median = unname(as.numeric(q$quantile)), q_lower = unname(as.numeric(q$lower)),
              q_upper = unname(as.numeric(q$upper)),
              time = f$time, surv = f$surv, lower = f$lower, upper = f$upper, n_risk = f$n.risk,
              std_err = f$std.err)
  out
}
ref$km <- list(
  lung_sex_log = km_ref(Surv(time, status) ~ sex, lungd, "log"),
  lung_sex_loglog = km_ref(Surv(time, status) ~ sex, lungd, "log-log"),
  lung_all_log = km_ref(Surv(time, status) ~ 1, lungd, "log"),
  lung_all_loglog = km_ref(Surv(time, status) ~ 1, lungd, "log-log")
)
# at-risk numbers at fixed times (for the table under the plot)
sf <- summary(survfit(Surv(time, status) ~ sex, data = lungd), times = c(0, 200, 400, 600, 800, 1000), extend = TRUE)
ref$km_at_risk <- list(strata = as.character(sf$strata), time = sf$time, n_risk = sf$n.risk)

# exact 0.5 plateau: R takes the mid-point to the next event time
plateau <- data.frame(time = c(1, 2, 3, 4, 5, 6, 7, 8), status = c(1, 1, 1, 1, 1, 0, 1, 1))
wcsv(plateau, "plateau.csv")
ref$km$plateau_log <- km_ref(Surv(time, status) ~ 1, plateau, "log")

lr <- function(formula, data) {
  d <- survdiff(formula, data = data)
  list(chisq = d$chisq, df = length(d$n) - 1, p = pchisq(d$chisq, length(d$n) - 1, lower.tail = FALSE),
       observed = unname(d$obs), expected = unname(d$exp), n = unname(as.numeric(d$n)))
}
ref$logrank <- list(lung_sex = lr(Surv(time, status) ~ sex, lungd),
                    lung_ecog = lr(Surv(time, status) ~ ph_ecog, lungd))

# veteran: four cell types
vet <- data.frame(time = veteran$time, status = veteran$status, celltype = as.character(veteran$celltype),
                  karno = veteran$karno, age = veteran$age, trt = veteran$trt, prior = veteran$prior)
wcsv(vet, "veteran.csv")
ref$logrank$veteran_celltype <- lr(Surv(time, status) ~ celltype, vet)
ref$km$veteran_celltype_log <- km_ref(Surv(time, status) ~ celltype, vet, "log")

# ---------------------------------------------------------------- Cox (Efron ties)
ctl <- coxph.control(eps = 1e-12, iter.max = 100, toler.chol = 1e-15)
cox_ref <- function(formula, data) {
  m <- coxph(formula, data = data, ties = "efron", control = ctl)
  s <- summary(m)
  list(terms = names(coef(m)), coef = unname(coef(m)), se = unname(sqrt(diag(vcov(m)))),
       hr = unname(exp(coef(m))), hr_lower = unname(s$conf.int[, 3]), hr_upper = unname(s$conf.int[, 4]),
       p = unname(s$coefficients[, 5]), n = m$n, nevent = m$nevent,
       loglik = m$loglik, lr_test = unname(s$logtest), wald_test = unname(s$waldtest),
       score_test = unname(s$sctest), concordance = unname(m$concordance["concordance"]),
       concordance_se = unname(sqrt(m$concordance["var"])))
}
ref$cox <- list(
  lung_multi = cox_ref(Surv(time, status) ~ age + sex + ph_ecog, lungd),
  lung_sex = cox_ref(Surv(time, status) ~ sex, lungd),
  lung_karno = cox_ref(Surv(time, status) ~ ph_karno + wt_loss, lungd),
  veteran = cox_ref(Surv(time, status) ~ karno + age + trt, vet)
)
ov <- data.frame(time = ovarian$futime, status = ovarian$fustat, age = ovarian$age, ecog = ovarian$ecog.ps,
                 rx = ovarian$rx, resid_ds = ovarian$resid.ds)
wcsv(ov, "ovarian.csv")
ref$cox$ovarian <- cox_ref(Surv(time, status) ~ age + ecog + rx, ov)

# cox scan (paper figure 4): marker 'sex' with each covariate; complete cases per model
scan <- list()
for (cv in c("age", "ph_ecog", "ph_karno", "wt_loss")) {
  d <- na.omit(lungd[, c("time", "status", "sex", cv)])
  f <- as.formula(paste("Surv(time, status) ~ sex +", cv))
  scan[[cv]] <- cox_ref(f, d)
}
ref$cox_scan <- scan

# ---------------------------------------------------------------- maxstat (cut-point)
data(DLBCL)
dl <- data.frame(time = DLBCL$time, cens = DLBCL$cens, MGE = DLBCL$MGE, IPI = DLBCL$IPI)
wcsv(dl, "dlbcl.csv")
ms_ref <- function(formula, data, timecol, eventcol, xcol, minprop = 0.1, maxprop = 0.9) {
  m <- maxstat.test(formula, data = data, smethod = "LogRank", pmethod = "Lau92", minprop = minprop, maxprop = maxprop)
  d <- data[complete.cases(data[, c(timecol, eventcol, xcol)]), ]
  grp <- d[[xcol]] > m$estimate
  sd <- survdiff(Surv(d[[timecol]], d[[eventcol]]) ~ grp)
  list(statistic = unname(m$statistic), p = m$p.value, estimate = unname(m$estimate), stats = unname(m$stats),
       cuts = unname(m$cuts), naive_logrank_chisq = sd$chisq, naive_logrank_p = pchisq(sd$chisq, 1, lower.tail = FALSE))
}
ref$maxstat <- list(
  dlbcl_mge = ms_ref(Surv(time, cens) ~ MGE, dl, "time", "cens", "MGE"),
  lung_age = ms_ref(Surv(time, status) ~ age, lungd, "time", "status", "age"),
  lung_karno = ms_ref(Surv(time, status) ~ ph_karno, lungd, "time", "status", "ph_karno", 0.2, 0.8)
)

# ---------------------------------------------------------------- Table 1 tests
t1 <- na.omit(lungd[, c("sex", "ph_ecog", "age", "wt_loss")])
ref$table1 <- list(
  chisq_sex_ecog = list(p = chisq.test(table(t1$sex, t1$ph_ecog > 0))$p.value,
                        statistic = unname(chisq.test(table(t1$sex, t1$ph_ecog > 0))$statistic)),
  fisher_sex_ecog = list(p = fisher.test(table(t1$sex, t1$ph_ecog))$p.value),
  fisher_2x2 = list(p = fisher.test(table(t1$sex, t1$ph_ecog > 1))$p.value),
  welch_age = list(p = t.test(age ~ sex, data = t1)$p.value, statistic = unname(t.test(age ~ sex, data = t1)$statistic)),
  student_age = list(p = t.test(age ~ sex, data = t1, var.equal = TRUE)$p.value)
)

writeLines(toJSON(ref, digits = NA, auto_unbox = TRUE, na = "null", pretty = TRUE), file.path(outdir, "reference.json"))
cat("wrote", file.path(outdir, "reference.json"), "\n")
