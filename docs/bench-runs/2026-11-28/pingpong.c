// Round trip of one byte between two processes over pipes, each pinned to a CPU,
// with an idle gap (ns) before each round trip: how long waking a process takes when
// its vCPU has been idle for that long.
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
static long long now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1000000000LL+t.tv_nsec;}
static void pin(int c){cpu_set_t s;CPU_ZERO(&s);CPU_SET(c,&s);sched_setaffinity(0,sizeof s,&s);}
static int cmp(const void*a,const void*b){long long x=*(long long*)a,y=*(long long*)b;return x<y?-1:x>y;}
int main(int argc,char**argv){
  int n=atoi(argv[1]); long gap=atol(argv[2]); int cpu_a=atoi(argv[3]), cpu_b=atoi(argv[4]);
  int ab[2],ba[2]; pipe(ab); pipe(ba); char c='x';
  if(fork()==0){pin(cpu_b); for(int i=0;i<n;i++){read(ab[0],&c,1);write(ba[1],&c,1);} return 0;}
  pin(cpu_a); long long*rt=malloc(sizeof(long long)*n);
  for(int i=0;i<n;i++){
    if(gap>0){struct timespec g={0,gap};nanosleep(&g,0);}
    long long t=now(); write(ab[1],&c,1); read(ba[0],&c,1); rt[i]=now()-t;}
  qsort(rt,n,sizeof *rt,cmp);
  printf("gap %6ld us, cpus %d->%d: round trip p50 %5.1f us  p90 %5.1f us  p99 %5.1f us\n",gap/1000,cpu_a,cpu_b,rt[n/2]/1e3,rt[n*9/10]/1e3,rt[n*99/100]/1e3);
  return 0;}
