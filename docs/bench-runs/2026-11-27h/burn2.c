#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
struct sched_attr { uint32_t size, sched_policy; uint64_t sched_flags; int32_t sched_nice; uint32_t sched_priority; uint64_t sched_runtime, sched_deadline, sched_period; uint32_t util_min, util_max; };
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e3+t.tv_nsec/1e6;}
/* burn2 POLICY(0=other,5=idle) NICE SLICE_NS */
int main(int c,char**v){struct sched_attr a={0};a.size=sizeof a;a.sched_policy=atoi(v[1]);a.sched_nice=atoi(v[2]);a.sched_runtime=strtoull(v[3],0,10);
if(syscall(SYS_sched_setattr,0,&a,0)){perror("sched_setattr");return 1;}
struct sched_attr g={0};syscall(SYS_sched_getattr,0,&g,sizeof g,0);fprintf(stderr,"policy %u nice %d runtime %lu\n",g.sched_policy,g.sched_nice,(unsigned long)g.sched_runtime);
volatile unsigned long x=0;for(;;)x++;}
