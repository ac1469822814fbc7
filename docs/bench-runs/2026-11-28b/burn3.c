#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <fcntl.h>
#include <unistd.h>
#include <sched.h>
#include <signal.h>
/* burn3 BURST_US PERIOD_US CHUNK_US GATED(0/1)
 * SCHED_IDLE; every PERIOD_US does BURST_US of spinning in CHUNK_US pieces; if GATED,
 * before each piece reads /proc/loadavg and, while more tasks are runnable than CPUs,
 * sleeps 200 us. On SIGTERM prints work done and gate sleeps. */
static double now_us(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e6+t.tv_nsec/1e3;}
static double cpu_us(){struct timespec t;clock_gettime(CLOCK_THREAD_CPUTIME_ID,&t);return t.tv_sec*1e6+t.tv_nsec/1e3;}
static volatile sig_atomic_t stop=0; static void h(int s){stop=1;}
static int lfd; static long ncpu;
static int contended(){char b[128];ssize_t n=pread(lfd,b,sizeof b-1,0);if(n<=0)return 0;b[n]=0;
  char*p=b;for(int i=0;i<3;i++){p=strchr(p,' ');if(!p)return 0;p++;} return atoi(p)>ncpu;}
int main(int c,char**v){double burst=atof(v[1]),period=atof(v[2]),chunk=atof(v[3]);int gated=atoi(v[4]);
  struct sched_param sp={0}; if(sched_setscheduler(0,SCHED_IDLE,&sp)){perror("sched");return 1;}
  signal(SIGTERM,h); lfd=open("/proc/loadavg",O_RDONLY); ncpu=sysconf(_SC_NPROCESSORS_ONLN);
  long bursts=0,sleeps=0; double late=0; double next=now_us(); volatile unsigned long x=0;
  while(!stop){ double t=now_us(); if(t<next){usleep((useconds_t)(next-t)); continue;}
    double start=now_us(); double done=0;
    while(done<burst && !stop){ if(gated){ while(contended()&&!stop){usleep(200);sleeps++;} }
      double c0=cpu_us(); double want=chunk<burst-done?chunk:burst-done; while(cpu_us()-c0<want)x++; done+=want; }
    bursts++; late+=now_us()-start-burst; next+=period; if(next<now_us())next=now_us(); }
  fprintf(stderr,"bursts=%ld gate_sleeps=%ld mean_extra_us_per_burst=%.0f\n",bursts,sleeps,bursts?late/bursts:0);
  return 0;}
