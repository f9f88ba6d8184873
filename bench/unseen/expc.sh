#!/bin/bash
# usage: expc.sh NAME SET "CLASSIFIER OPTS" THETA_RUN [EXTS]: step 1 alone (exp_step.sh cls)
exec "$(dirname "$0")/exp_step.sh" cls "$@"
